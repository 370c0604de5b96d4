package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	digest "github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/rs/zerolog"
	"github.com/sirupsen/logrus"

	"github.com/taglock/taglock/internal/admin"
	"github.com/taglock/taglock/internal/config"
	"github.com/taglock/taglock/internal/server"
	"github.com/taglock/taglock/proxy"
	"github.com/taglock/taglock/storage"
	"github.com/taglock/taglock/storage/bolt"
)

// ltUpstream is a Distribution registry on its own loopback listener that
// tests write to directly, around taglock.
type ltUpstream struct{ url string }

func ltStartUpstream(t *testing.T) *ltUpstream {
	t.Helper()
	cfg, err := configuration.Parse(strings.NewReader(fmt.Sprintf(`
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage:
  filesystem: {rootdirectory: %q}
  delete: {enabled: true}
  redirect: {disable: true}
http: {addr: 127.0.0.1:0, secret: ltsecret-ltsecret-ltsecret-ltsecret}
`, t.TempDir())))
	if err != nil {
		t.Fatal(err)
	}
	logrus.SetLevel(logrus.ErrorLevel) // Distribution logs every request at info
	app := handlers.NewApp(context.Background(), cfg)
	srv := httptest.NewServer(app)
	t.Cleanup(func() { srv.Close(); _ = app.Shutdown() })
	return &ltUpstream{url: srv.URL}
}

func (u *ltUpstream) do(t *testing.T, method, target, contentType string, body []byte) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, target, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// manifest uploads a config and a layer holding content to repo on the
// upstream and returns an image manifest referencing them.
func (u *ltUpstream) manifest(t *testing.T, repo, content string) []byte {
	t.Helper()
	blob := func(b []byte, mediaType string) ocispec.Descriptor {
		d := digest.FromBytes(b)
		resp := u.do(t, http.MethodPost, u.url+"/v2/"+repo+"/blobs/uploads/", "", nil)
		loc, err := url.Parse(resp.Header.Get("Location"))
		if err != nil || resp.StatusCode != http.StatusAccepted {
			t.Fatalf("start upload: %d %v", resp.StatusCode, err)
		}
		q := loc.Query()
		q.Set("digest", d.String())
		loc.RawQuery = q.Encode()
		if resp := u.do(t, http.MethodPut, u.url+loc.RequestURI(), "application/octet-stream", b); resp.StatusCode != http.StatusCreated {
			t.Fatalf("upload blob: %d", resp.StatusCode)
		}
		return ocispec.Descriptor{MediaType: mediaType, Digest: d, Size: int64(len(b))}
	}
	m, err := json.Marshal(ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest,
		Config: blob([]byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`), ocispec.MediaTypeImageConfig),
		Layers: []ocispec.Descriptor{blob([]byte(content), ocispec.MediaTypeImageLayer)}})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// put writes repo:tag with content directly on the upstream.
func (u *ltUpstream) put(t *testing.T, repo, tag, content string) digest.Digest {
	t.Helper()
	m := u.manifest(t, repo, content)
	if resp := u.do(t, http.MethodPut, u.url+"/v2/"+repo+"/manifests/"+tag, ocispec.MediaTypeImageManifest, m); resp.StatusCode != http.StatusCreated {
		t.Fatalf("put %s:%s: %d", repo, tag, resp.StatusCode)
	}
	return digest.FromBytes(m)
}

// ltEnv is a data directory, its config file and an upstream.
type ltEnv struct {
	up   *ltUpstream
	data string
	conf string
	cfg  config.Config
	srv  *server.Server
}

func ltNewEnv(t *testing.T) *ltEnv {
	t.Helper()
	e := &ltEnv{up: ltStartUpstream(t), data: filepath.Join(t.TempDir(), "data")}
	e.cfg = config.Default()
	e.cfg.Listen, e.cfg.Data, e.cfg.Upstream.URL = "127.0.0.1:0", e.data, e.up.url
	e.writeConf(t, "127.0.0.1:1") // nothing answers there until serve starts
	return e
}

func (e *ltEnv) writeConf(t *testing.T, listen string) {
	t.Helper()
	e.conf = filepath.Join(filepath.Dir(e.data), "taglock.yaml")
	y := fmt.Sprintf("listen: %s\ndata: %s\nupstream:\n  url: %s\nlog:\n  level: error\n", listen, e.data, e.up.url)
	if err := os.WriteFile(e.conf, []byte(y), 0o600); err != nil {
		t.Fatal(err)
	}
}

func (e *ltEnv) serve(t *testing.T) {
	t.Helper()
	srv, err := server.Start(context.Background(), e.cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	e.srv = srv
	e.writeConf(t, srv.Addr())
}

func (e *ltEnv) stop(t *testing.T) {
	t.Helper()
	if err := e.srv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	e.srv = nil
}

// run executes one taglock command with the env's config and returns
// stdout, stderr and the exit code main would use.
func (e *ltEnv) run(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	root := newRoot()
	var out, errb bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetIn(strings.NewReader(""))
	root.SetArgs(append([]string{"--config", e.conf}, args...))
	err := root.ExecuteContext(context.Background())
	var ee exitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.code
		errb.WriteString(ee.msg)
	default:
		code = 1
		errb.WriteString(err.Error())
	}
	return out.String(), errb.String(), code
}

func (e *ltEnv) mustRun(t *testing.T, want int, args ...string) string {
	t.Helper()
	out, errs, code := e.run(t, args...)
	if code != want {
		t.Fatalf("taglock %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, want, out, errs)
	}
	if strings.Contains(errs, "locked") || strings.Contains(errs, "timeout") {
		t.Errorf("taglock %s surfaced a lock error: %s", strings.Join(args, " "), errs)
	}
	return out
}

// TestLedgerToolsStory ensures that every ledger command gives the same
// answers with serve running (through the admin API) and without it
// (opening the ledger itself): import adopts the upstream's tags, verify
// reports tags moved, deleted and added around taglock and exits 3 until
// --repair restores the immutable ones, resolve prints pinned references,
// history shows a refused push, and the ledger backs up, exports, imports
// and checks clean.
func TestLedgerToolsStory(t *testing.T) {
	t.Parallel()
	e := ltNewEnv(t)
	v10 := e.up.put(t, "team/app", "1.0", "one")
	v11 := e.up.put(t, "team/app", "1.1", "one-one")
	e.up.put(t, "team/app", "2.0", "two")

	// Without serve.
	e.mustRun(t, 1, "resolve", "team/app:1.0") // no ledger yet
	var rep proxy.ImportReport
	mustJSON(t, e.mustRun(t, 0, "import", "--rate", "500/s", "-o", "json"), &rep)
	if rep.Adopted != 3 || rep.Tags != 3 {
		t.Fatalf("import = %+v, want 3 adopted", rep)
	}
	if out := e.mustRun(t, 0, "import"); !strings.Contains(out, "adopted 0, already recorded 3") {
		t.Errorf("second import: %s", out)
	}
	e.mustRun(t, 0, "verify")
	if out := e.mustRun(t, 0, "resolve", "--host", "reg.example", "team/app:1.0"); out != "reg.example/team/app:1.0@"+v10.String()+"\n" {
		t.Errorf("resolve = %q", out)
	}

	for _, mode := range []string{"serving", "offline"} {
		t.Run(mode, func(t *testing.T) {
			if mode == "serving" {
				e.serve(t)
				defer e.stop(t)
				// A push through taglock that would move 1.0 is refused.
				m := e.up.manifest(t, "team/app", "evil")
				resp := e.up.do(t, http.MethodPut, "http://"+e.srv.Addr()+"/v2/team/app/manifests/1.0", ocispec.MediaTypeImageManifest, m)
				if resp.StatusCode != http.StatusForbidden {
					t.Fatalf("moving push through taglock: %d, want 403", resp.StatusCode)
				}
			}
			host := dialable(e.cfgListen(t))
			if out := e.mustRun(t, 0, "resolve", "team/app:1.0", "team/app:1.1"); out != fmt.Sprintf("%s/team/app:1.0@%s\n%s/team/app:1.1@%s\n", host, v10, host, v11) {
				t.Errorf("resolve = %q", out)
			}
			var res []resolved
			out, _, code := e.run(t, "resolve", "-o", "json", "team/app:1.0", "team/app:9.9")
			mustJSON(t, out, &res)
			if code != 1 || len(res) != 2 || res[0].Digest != v10 || res[1].Error == "" {
				t.Errorf("resolve with an unknown tag: exit %d, %+v", code, res)
			}

			var events []storage.Event
			mustJSON(t, e.mustRun(t, 0, "history", "team/app:1.0", "-o", "json"), &events)
			kinds := map[storage.EventKind]bool{}
			for _, ev := range events {
				kinds[ev.Kind] = true
			}
			if !kinds[storage.EventRefused] || len(events) == 0 || events[len(events)-1].Kind != storage.EventAdopted {
				t.Errorf("history of 1.0 = %+v, want a refusal and the adoption last", events)
			}
			if out := e.mustRun(t, 0, "history", "team/app", "--limit", "2"); strings.Count(out, "\n") != 3 || !strings.HasPrefix(out, "TIME") {
				t.Errorf("history of the repository, limit 2:\n%s", out)
			}
			e.mustRun(t, 1, "history", "nothing/here")

			// Writes around taglock: move 1.0, delete 1.1, add 3.0.
			moved := e.up.put(t, "team/app", "1.0", "tampered-"+mode)
			if resp := e.up.do(t, http.MethodDelete, e.up.url+"/v2/team/app/manifests/1.1", "", nil); resp.StatusCode != http.StatusAccepted {
				t.Fatalf("delete 1.1 upstream: %d", resp.StatusCode)
			}
			added := e.up.put(t, "team/app", "3.0-"+mode, "three")
			var vr admin.VerifyResult
			out, _, code = e.run(t, "verify", "-o", "json")
			mustJSON(t, out, &vr)
			got := map[string]string{}
			for _, f := range vr.Report.Findings {
				got[f.Tag] = fmt.Sprintf("%s %s %s", f.Kind, f.Recorded, f.Actual)
			}
			want := map[string]string{
				"1.0":         fmt.Sprintf("moved %s %s", v10, moved),
				"1.1":         fmt.Sprintf("deleted %s ", v11),
				"3.0-" + mode: fmt.Sprintf("new  %s", added),
			}
			if code != exitDrift || fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("verify: exit %d, findings %v; want exit 3 and %v", code, got, want)
			}
			if out := e.mustRun(t, 0, "verify", "--repair"); !strings.Contains(out, "repair team/app:1.0: restored") || !strings.Contains(out, "after repair") {
				t.Errorf("verify --repair:\n%s", out)
			}
			e.mustRun(t, 0, "import") // adopts the new tag
			if out := e.mustRun(t, 0, "verify"); !strings.Contains(out, "0 findings") {
				t.Errorf("verify after repair and import:\n%s", out)
			}

			e.mustRun(t, 0, "ledger", "check")
			dir := t.TempDir()
			backup, export := filepath.Join(dir, "backup.db"), filepath.Join(dir, "export.jsonl")
			e.mustRun(t, 0, "ledger", "backup", backup)
			e.mustRun(t, 0, "ledger", "export", export)
			stdoutExport := e.mustRun(t, 0, "ledger", "export")
			if b, _ := os.ReadFile(export); string(b) != stdoutExport || !strings.Contains(stdoutExport, `"type":"binding"`) {
				t.Errorf("export to a file and to stdout differ, or hold no bindings")
			}
			l, err := bolt.Open(backup, bolt.Options{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			if b, err := l.Binding(context.Background(), "team/app", "1.0"); err != nil || b.Digest != v10 {
				t.Errorf("backup binding of 1.0 = %+v, %v", b, err)
			}
			_ = l.Close()
			// Importing the export again changes nothing and is safe.
			var st storage.ImportStats
			mustJSON(t, e.mustRun(t, 0, "ledger", "import", export, "-o", "json"), &st)
			if st.Bindings != 4+btoi(mode == "offline") {
				t.Errorf("ledger import = %+v", st)
			}
			if again := e.mustRun(t, 0, "ledger", "export"); again != stdoutExport {
				t.Error("export changed after importing it again")
			}
		})
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// cfgListen is the listen address the env's config file names.
func (e *ltEnv) cfgListen(t *testing.T) string {
	t.Helper()
	cfg, err := config.Load(e.conf)
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Listen
}

func mustJSON(t *testing.T, s string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(s), v); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, s)
	}
}

// TestLedgerImportIntoFreshDataDir ensures that an export imported into a
// new data directory exports to the same bytes and checks clean: the
// migration path between ledgers.
func TestLedgerImportIntoFreshDataDir(t *testing.T) {
	t.Parallel()
	e := ltNewEnv(t)
	e.up.put(t, "app", "1.0", "one")
	e.mustRun(t, 0, "import")
	export := e.mustRun(t, 0, "ledger", "export")
	f := filepath.Join(t.TempDir(), "export.jsonl")
	if err := os.WriteFile(f, []byte(export), 0o600); err != nil {
		t.Fatal(err)
	}
	fresh := ltNewEnv(t)
	fresh.mustRun(t, 0, "ledger", "import", f)
	if got := fresh.mustRun(t, 0, "ledger", "export"); got != export {
		t.Errorf("export after migration differs:\n%s\n---\n%s", got, export)
	}
	fresh.mustRun(t, 0, "ledger", "check")
}

// TestLedgerCommandUsage ensures that bad arguments exit 2 and a missing
// ledger exits 1 with a message that names it, never a lock error. The
// cases run in order: none of them may create the ledger.
func TestLedgerCommandUsage(t *testing.T) {
	t.Parallel()
	e := ltNewEnv(t)
	tests := []struct {
		args []string
		want int
		text string
	}{
		{[]string{"ledger", "check"}, exitFailure, "no ledger at"},
		{[]string{"history", "app:1"}, exitFailure, "no ledger at"},
		{[]string{"resolve"}, exitUsage, "requires at least 1 arg"},
		{[]string{"resolve", "app"}, exitUsage, "not REPO:TAG"},
		{[]string{"resolve", "app:1", "-o", "yaml"}, exitUsage, "--output"},
		{[]string{"import", "--rate", "fast"}, exitUsage, "--rate"},
		{[]string{"import", "--repos", "bad glob"}, exitUsage, "glob"},
		{[]string{"history", "app", "--limit", "-1"}, exitUsage, "--limit"},
		{[]string{"ledger", "backup"}, exitUsage, "accepts 1 arg"},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			_, errs, code := e.run(t, tc.args...)
			if code != tc.want || !strings.Contains(errs, tc.text) {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, errs, tc.want, tc.text)
			}
		})
	}
}

// TestUnreachableServer ensures that a ledger held by a process without an
// admin socket answering where the config says gives an explanation, not a
// lock error, and that the command does not hang.
func TestUnreachableServer(t *testing.T) {
	t.Parallel()
	e := ltNewEnv(t)
	e.up.put(t, "app", "1.0", "one")
	e.mustRun(t, 0, "import")
	l, err := bolt.Open(server.LedgerPath(e.data), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, errs, code := e.run(t, "resolve", "app:1.0")
	sock := filepath.Join(e.data, "taglock.sock")
	if code != 1 || !strings.Contains(errs, "in use by another process") || !strings.Contains(errs, "admin socket "+sock) {
		t.Errorf("exit %d, stderr %q; want 1 and an explanation naming the admin socket", code, errs)
	}
}
