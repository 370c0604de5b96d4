package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/taglock/taglock/internal/config"
)

// readAudit returns the JSON lines of the audit file.
func readAudit(t *testing.T, path string) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("audit line is not JSON: %v: %s", err, sc.Text())
		}
		out = append(out, m)
	}
	return out
}

// TestAuditFile ensures that with log.audit set every audit event (here an
// identical re-push and a refusal) is appended to the file as one JSON line
// carrying the request ID the client got back in X-Request-Id, while the
// log still receives it.
func TestAuditFile(t *testing.T) {
	t.Parallel()
	auditPath := filepath.Join(t.TempDir(), "audit.jsonl")
	var logBuf syncBuffer
	cfg := config.Default()
	cfg.Listen, cfg.Data, cfg.Log.Audit = "127.0.0.1:0", filepath.Join(t.TempDir(), "data"), auditPath
	if errs := cfg.Validate(); len(errs) > 0 {
		t.Fatal(errs)
	}
	srv, err := Start(context.Background(), cfg, zerolog.New(&logBuf).Level(zerolog.WarnLevel))
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + srv.Addr()
	if code, _ := push(t, base, "app", "1.0", "one"); code != http.StatusCreated {
		t.Fatalf("push: %d", code)
	}
	if code, _ := push(t, base, "app", "1.0", "one"); code != http.StatusCreated {
		t.Fatalf("identical re-push: %d", code)
	}
	m := image(t, base, "app", "two")
	req, _ := http.NewRequest(http.MethodPut, base+"/v2/app/manifests/1.0", bytes.NewReader(m))
	req.Header.Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
	req.Header.Set("X-Request-Id", "ci-run-42")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || resp.Header.Get("X-Request-Id") != "ci-run-42" {
		t.Fatalf("moving push: %d, X-Request-Id %q", resp.StatusCode, resp.Header.Get("X-Request-Id"))
	}
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	lines := readAudit(t, auditPath)
	events := map[string]map[string]any{}
	for _, l := range lines {
		ev, _ := l["event"].(string)
		events[ev] = l
		if l["time"] == nil || l["level"] == nil || l["message"] == nil {
			t.Errorf("audit line without time, level or message: %v", l)
		}
	}
	ref := events["refused"]
	if ref == nil || ref["request_id"] != "ci-run-42" || ref["repo"] != "app" || ref["reason"] != "immutable-tag-moved" {
		t.Errorf("refusal line = %v", ref)
	}
	if events["identical"] == nil {
		t.Errorf("no identical re-push event in %v", lines)
	}
	if !strings.Contains(logBuf.String(), `"request_id":"ci-run-42"`) {
		t.Errorf("the log lost the refusal:\n%s", logBuf.String())
	}
}
