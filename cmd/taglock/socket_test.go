package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/taglock/taglock/storage"
)

// auditEvents reads the audit file's events named event.
func auditEvents(t *testing.T, path, event string) []map[string]any {
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
			t.Fatalf("audit line is not JSON: %s", sc.Text())
		}
		if m["event"] == event {
			out = append(out, m)
		}
	}
	return out
}

// TestCommandsOnTheAdminSocket is the operator's story against a running
// serve, every call on its admin socket: import adopts a tag found
// upstream, verify --repair puts back an immutable tag moved around
// taglock, and a ledger import of an export whose line for that tag was
// forged is refused, naming the line and what it would change, and leaves
// resolve printing the recorded digest, until --force applies it. Each
// change is in the audit file, naming the user on the socket. --data finds
// the socket when the config names another data directory.
func TestCommandsOnTheAdminSocket(t *testing.T) {
	t.Parallel()
	e := ltNewEnv(t)
	v10 := e.up.put(t, "team/app", "1.0", "one")
	e.mustRun(t, 0, "import")
	auditFile := filepath.Join(t.TempDir(), "audit.jsonl")
	e.cfg.Log.Audit = auditFile
	e.serve(t)
	defer e.stop(t)
	user := fmt.Sprintf("(uid %d, pid %d) on the admin socket", os.Getuid(), os.Getpid())

	e.up.put(t, "team/app", "2.0", "two")
	if out := e.mustRun(t, 0, "import"); !strings.Contains(out, "adopted 1") {
		t.Errorf("import through serve: %s", out)
	}
	if ev := auditEvents(t, auditFile, "adopted"); len(ev) != 1 || ev[0]["tag"] != "2.0" {
		t.Errorf("adopted events: %v", ev)
	}
	if ev := auditEvents(t, auditFile, "upstream-imported"); len(ev) != 1 || !strings.HasSuffix(fmt.Sprint(ev[0]["user"]), user) {
		t.Errorf("upstream-imported events: %v, want the user %q", ev, user)
	}

	e.up.put(t, "team/app", "1.0", "moved around taglock")
	e.mustRun(t, exitDrift, "verify")
	e.mustRun(t, 0, "verify", "--repair")
	if ev := auditEvents(t, auditFile, "repaired"); len(ev) != 1 || ev[0]["tag"] != "1.0" {
		t.Errorf("repaired events: %v", ev)
	}
	if ev := auditEvents(t, auditFile, "verify-repaired"); len(ev) != 1 || ev[0]["restored"] != 1.0 {
		t.Errorf("verify-repaired events: %v", ev)
	}

	forged := "sha256:" + strings.Repeat("f", 64)
	var lines []string
	for _, l := range strings.SplitAfter(e.mustRun(t, 0, "ledger", "export"), "\n") {
		if strings.Contains(l, `"type":"binding"`) && strings.Contains(l, `"tag":"1.0"`) {
			l = strings.Replace(l, v10.String(), forged, 1)
			l = strings.Replace(l, `"mode":"immutable"`, `"mode":"mutable"`, 1)
		}
		lines = append(lines, l)
	}
	file := filepath.Join(t.TempDir(), "forged.jsonl")
	if err := os.WriteFile(file, []byte(strings.Join(lines, "")), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errs, code := e.run(t, "ledger", "import", file)
	if code != exitFailure || !strings.Contains(out, "line 1, team/app:1.0, contradicts the ledger:\n    digest      "+v10.String()+" -> "+forged+"\n") ||
		!strings.Contains(out, "    mode        immutable -> mutable\n") || !strings.Contains(errs, "--force") {
		t.Fatalf("ledger import of a forged line: exit %d\nstdout: %s\nstderr: %s", code, out, errs)
	}
	if out := e.mustRun(t, 0, "resolve", "team/app:1.0"); !strings.HasSuffix(out, "@"+v10.String()+"\n") {
		t.Errorf("resolve after a refused import = %q, want %s", out, v10)
	}
	if ev := auditEvents(t, auditFile, "refused"); len(ev) != 1 || ev[0]["reason"] != "import-contradicts-ledger" || ev[0]["digest"] != forged {
		t.Errorf("refused events: %v", ev)
	}

	out = e.mustRun(t, 0, "ledger", "import", "--force", file)
	if !strings.Contains(out, "line 1, team/app:1.0, replaced what the ledger held:\n    digest      "+v10.String()+" -> "+forged+"\n") {
		t.Errorf("ledger import --force: %s", out)
	}
	var st storage.ImportStats
	mustJSON(t, e.mustRun(t, 0, "ledger", "import", "-o", "json", file), &st)
	if len(st.Replaced) != 0 {
		t.Errorf("importing the applied file again replaced %v", st.Replaced)
	}
	if out := e.mustRun(t, 0, "resolve", "team/app:1.0"); !strings.HasSuffix(out, "@"+forged+"\n") {
		t.Errorf("resolve after a forced import = %q, want %s", out, forged)
	}
	if ev := auditEvents(t, auditFile, "binding-replaced"); len(ev) != 1 || ev[0]["recorded"] != v10.String() || ev[0]["digest"] != forged ||
		!strings.HasSuffix(fmt.Sprint(ev[0]["user"]), user) {
		t.Errorf("binding-replaced events: %v", ev)
	}

	// The config names another data directory; --data finds the socket.
	other := filepath.Join(t.TempDir(), "taglock.yaml")
	if err := os.WriteFile(other, []byte("data: "+t.TempDir()+"\nlog: {level: error}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e.conf, other = other, e.conf
	e.mustRun(t, 0, "ledger", "check", "--data", e.data)
	e.mustRun(t, 0, "history", "--data", e.data, "team/app:1.0")
	e.conf = other

	// The registry listener itself has no admin API.
	resp, err := http.Post("http://"+e.srv.Addr()+"/taglock/v1/admin/ledger/check", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("admin call on the listen address: %d, want 404", resp.StatusCode)
	}
}
