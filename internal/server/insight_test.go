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
	"time"

	"github.com/rs/zerolog"

	"github.com/taglock/taglock/internal/admin"
	"github.com/taglock/taglock/internal/config"
	"github.com/taglock/taglock/proxy"
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

// TestScheduledVerify ensures that serve with verify.schedule finds a tag
// deleted around taglock on its first run, reports it as a "drift" audit
// event naming the recorded digest, and shows it in taglock_drift_findings.
func TestScheduledVerify(t *testing.T) {
	t.Parallel()
	auditPath := filepath.Join(t.TempDir(), "audit.jsonl")
	data := filepath.Join(t.TempDir(), "data")
	// First serve without a schedule, push, and delete around taglock
	// by removing the tag from the embedded registry's storage.
	srv, base := startOnly(t, func(c *config.Config) { c.Data = data })
	code, d := push(t, base, "team/app", "1.0", "one")
	if code != http.StatusCreated {
		t.Fatalf("push: %d", code)
	}
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	tagDir := filepath.Join(data, "registry", "data", "docker", "registry", "v2", "repositories", "team", "app", "_manifests", "tags", "1.0")
	if _, err := os.Stat(tagDir); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(tagDir); err != nil {
		t.Fatal(err)
	}

	srv, base = mustStart(t, func(c *config.Config) {
		c.Data, c.Log.Audit, c.Verify.Schedule = data, auditPath, config.Duration(time.Hour)
	})
	deadline := time.Now().Add(10 * time.Second)
	for srv.insight.drift().Last == nil && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	var status admin.DriftStatus
	resp, body := do(t, http.MethodGet, base+"/taglock/v1/drift", "", nil)
	if err := json.Unmarshal(body, &status); err != nil || resp.StatusCode != http.StatusOK || status.Schedule != "1h0m0s" {
		t.Fatalf("GET /taglock/v1/drift: %d %v %s", resp.StatusCode, err, body)
	}
	st := status.Last
	if st == nil || st.Error != "" || len(st.Report.Findings) != 1 || st.Report.Findings[0].Kind != proxy.DriftDeleted {
		t.Fatalf("drift status = %+v, want one deleted finding", st)
	}
	_, body = do(t, http.MethodGet, base+"/metrics", "", nil)
	for _, want := range []string{
		`taglock_drift_findings{kind="deleted",mode="immutable"} 1`,
		`taglock_drift_findings{kind="moved",mode="immutable"} 0`,
		`taglock_verify_runs_total{result="drift"} 1`,
	} {
		if !strings.Contains(string(body), want+"\n") {
			t.Errorf("/metrics lacks %s:\n%s", want, grepTaglock(string(body)))
		}
	}
	var drift map[string]any
	for _, l := range readAudit(t, auditPath) {
		if l["event"] == "drift" {
			drift = l
		}
	}
	if drift == nil || drift["drift"] != "deleted" || drift["recorded"] != d.String() || drift["immutable"] != true || drift["tag"] != "1.0" {
		t.Errorf("drift audit event = %v", drift)
	}
}
