package integration

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/rs/zerolog"

	"github.com/taglock/taglock/internal/server"
)

// logSink collects JSON log lines.
type logSink struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

// lines returns the lines logged so far, decoded, and forgets them.
func (s *logSink) lines(t *testing.T) []map[string]any {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for l := range strings.Lines(s.buf.String()) {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line is not JSON: %q", l)
		}
		out = append(out, m)
	}
	s.buf.Reset()
	return out
}

// In embedded mode a push of a new image logs no errors: the registry's
// answers to normal misses (a blob HEAD before its upload, the manifest
// looked up before it is written) are request logging, at debug level, and
// taglock's own request line already says what happened. A real storage
// failure still logs an error from the registry.
//
// Not parallel: Distribution logs through logrus's process-wide logger,
// which the most recently started embedded registry routes; no other test
// runs while a sequential one does.
func TestEmbeddedRegistryLogsOnlyRealErrors(t *testing.T) {
	e := NewEnv(t, Embedded)
	sink := &logSink{}
	srv, err := server.Start(t.Context(), e.cfg, zerolog.New(sink).Level(zerolog.DebugLevel))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { shutdown(t, srv) })
	addr := srv.Addr()

	img := MustImage(t)
	MustPush(t, addr, "team/app:1.0", img)
	var misses int
	for _, l := range sink.lines(t) {
		if l["level"] == "error" {
			t.Errorf("a push logged an error: %v", l)
		}
		if l["component"] == "distribution" && l["http.response.status"] == float64(http.StatusNotFound) {
			misses++
		}
	}
	if misses == 0 {
		t.Error("the registry's answers to the push's lookups were not logged at debug level")
	}

	// Corrupt a layer on disk (a symbolic link to itself cannot be read,
	// even by root): pulling it is a storage failure, logged as one.
	layer := mustLayers(t, img)[0]
	data := filepath.Join(server.RegistryStorage(e.Data), "docker", "registry", "v2", "blobs",
		layer.Algorithm().String(), layer.Encoded()[:2], layer.Encoded(), "data")
	if err := os.Remove(data); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("data", data); err != nil {
		t.Fatal(err)
	}
	resp, _ := do(t, http.MethodGet, "http://"+addr+"/v2/team/app/blobs/"+layer.String(), nil, nil)
	if resp.StatusCode < 500 {
		t.Fatalf("pulling a corrupted layer: %d, want a 5xx", resp.StatusCode)
	}
	var logged bool
	for _, l := range sink.lines(t) {
		if l["level"] == "error" && l["component"] == "distribution" {
			logged = true
		}
	}
	if !logged {
		t.Error("the storage failure was not logged at error level by the registry")
	}
}
