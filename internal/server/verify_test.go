package server

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/taglock/taglock/internal/admin"
	"github.com/taglock/taglock/internal/config"
	"github.com/taglock/taglock/proxy"
)

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
	for srv.verify.status().Last == nil && time.Now().Before(deadline) {
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
