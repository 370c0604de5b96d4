package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/rs/zerolog"

	"github.com/taglock/taglock/internal/view"
	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/proxy"
	"github.com/taglock/taglock/storage"
	"github.com/taglock/taglock/storage/bolt"
)

// fakeTools answers verify with a fixed report and counts repairs.
type fakeTools struct {
	report  proxy.VerifyReport
	repairs int
	verifys int
}

func (f *fakeTools) ImportTags(_ context.Context, o proxy.ImportOptions) (proxy.ImportReport, error) {
	return proxy.ImportReport{Repositories: len(o.Repositories), Adopted: 1}, nil
}

func (f *fakeTools) Verify(context.Context, proxy.VerifyOptions) (proxy.VerifyReport, error) {
	f.verifys++
	if f.repairs > 0 {
		return proxy.VerifyReport{Findings: []proxy.Finding{}}, nil
	}
	return f.report, nil
}

func (f *fakeTools) Repair(_ context.Context, fs []proxy.Finding) ([]proxy.RepairResult, error) {
	f.repairs++
	out := make([]proxy.RepairResult, len(fs))
	for i, x := range fs {
		out[i] = proxy.RepairResult{Finding: x, Outcome: proxy.RepairRestored}
	}
	return out, nil
}

// mustLedger opens a ledger in a temporary directory holding one immutable
// binding (with manifest bytes) and one refusal of it.
func mustLedger(t *testing.T) storage.Ledger {
	t.Helper()
	l, err := bolt.Open(filepath.Join(t.TempDir(), "ledger.db"), bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	m := []byte(`{"schemaVersion":2}`)
	b := storage.Binding{Repo: "team/app", Tag: "1.0", Digest: digest.FromBytes(m), Mode: policy.Immutable,
		PushedAt: time.Unix(1700000000, 0).UTC(), PushedBy: "ci", Manifest: m}
	ev := []storage.Event{
		{Kind: storage.EventAccepted, Repo: "team/app", Tag: "1.0", Digest: b.Digest, User: "ci"},
		{Kind: storage.EventRefused, Repo: "team/app", Tag: "1.0", Digest: digest.FromString("other"), Previous: b.Digest, User: "mallory", Reason: "immutable-tag-moved"},
	}
	if err := l.Put(context.Background(), []storage.Binding{b}, ev); err != nil {
		t.Fatal(err)
	}
	return l
}

// mustSocket serves h on a Unix socket, as serve serves the admin API, and
// returns the socket's path.
func mustSocket(t *testing.T, h http.Handler) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "admin.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ConnContext: func(ctx context.Context, _ net.Conn) context.Context {
		return WithCaller(ctx, "tester on the socket")
	}}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return path
}

// mustClient is a Client of h served on a Unix socket.
func mustClient(t *testing.T, h http.Handler) *Client {
	t.Helper()
	return NewClient(mustSocket(t, h))
}

// TestReadAPI ensures that the read-only API shows repositories, bindings
// without manifest bytes, history newest first and refusals, and that an
// unknown tag is ErrNotFound for the client.
func TestReadAPI(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := mustClient(t, New(Options{Ledger: mustLedger(t)}))
	repos, err := c.Repositories(ctx)
	if err != nil || len(repos) != 1 || repos[0] != "team/app" {
		t.Fatalf("Repositories = %v, %v", repos, err)
	}
	tags, err := c.Bindings(ctx, "team/app")
	if err != nil || len(tags) != 1 || tags[0].Tag != "1.0" || tags[0].Manifest != nil {
		t.Fatalf("Bindings = %+v, %v; want 1.0 without manifest", tags, err)
	}
	b, err := c.Binding(ctx, "team/app", "1.0")
	if err != nil || b.PushedBy != "ci" || b.Manifest != nil {
		t.Fatalf("Binding = %+v, %v", b, err)
	}
	if _, err := c.Binding(ctx, "team/app", "9.9"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Binding of an unknown tag: %v, want ErrNotFound", err)
	}
	hist, err := c.History(ctx, "team/app", "", 0)
	if err != nil || len(hist) != 2 || hist[0].Kind != storage.EventRefused || hist[0].User != "mallory" {
		t.Fatalf("History = %+v, %v; want the refusal first", hist, err)
	}
	ref, err := c.Recent(ctx, storage.EventRefused, 10)
	if err != nil || len(ref) != 1 || ref[0].Reason != "immutable-tag-moved" {
		t.Fatalf("Recent refusals = %+v, %v", ref, err)
	}
}

// TestReadAPIErrors ensures that malformed read requests get 4xx JSON
// errors.
func TestReadAPIErrors(t *testing.T) {
	t.Parallel()
	h := New(Options{Ledger: mustLedger(t)})
	tests := []struct {
		path string
		want int
	}{
		{Prefix + "bindings/team/app", http.StatusBadRequest},
		{Prefix + "bindings/team/app:nope", http.StatusNotFound},
		{Prefix + "repositories/team/app", http.StatusNotFound},
		{Prefix + "repositories/none/tags", http.StatusNotFound},
		{Prefix + "history", http.StatusBadRequest},
		{Prefix + "refusals?limit=-1", http.StatusBadRequest},
	}
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			t.Parallel()
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, tc.path, nil))
			if rec.Code != tc.want || rec.Header().Get("Content-Type") != "application/json" {
				t.Errorf("GET %s = %d %s, want %d JSON", tc.path, rec.Code, rec.Header().Get("Content-Type"), tc.want)
			}
		})
	}
}

// TestAdminGuard ensures that the admin half answers only requests that
// arrived on a Unix socket of a handler built with Admin: over TCP, from
// loopback, with the old admin header, a forwarded-for address, or a
// foreign Host and Origin, an admin call is 404 and changes nothing.
func TestAdminGuard(t *testing.T) {
	t.Parallel()
	l := mustLedger(t)
	full := New(Options{Ledger: l, Admin: true})
	tcp := httptest.NewServer(full)
	t.Cleanup(tcp.Close)
	forged := `{"type":"binding","repo":"team/app","tag":"1.0","digest":"` + digest.FromString("forged").String() +
		`","size":1,"mode":"mutable","pushedAt":"2026-01-01T00:00:00Z","pushedBy":"mallory"}` + "\n"
	for _, tc := range []struct {
		name   string
		header http.Header
	}{
		{"no headers", nil},
		{"admin header", http.Header{"X-Taglock-Admin": {"1"}}},
		{"forwarded for", http.Header{"X-Taglock-Admin": {"1"}, "X-Forwarded-For": {"203.0.113.9"}}},
		{"foreign host and origin", http.Header{"X-Taglock-Admin": {"1"}, "Host": {"evil.example"}, "Origin": {"http://evil.example"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, path := range []string{"admin/ledger/import?force=true", "admin/ledger/check", "admin/verify"} {
				req, err := http.NewRequest(http.MethodPost, tcp.URL+Prefix+path, strings.NewReader(forged))
				if err != nil {
					t.Fatal(err)
				}
				for k, v := range tc.header {
					req.Header[k] = v
				}
				req.Host = req.Header.Get("Host")
				resp, err := tcp.Client().Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusNotFound {
					t.Errorf("POST %s over TCP: %d, want 404", path, resp.StatusCode)
				}
			}
		})
	}
	if b, err := l.Binding(context.Background(), "team/app", "1.0"); err != nil || b.PushedBy != "ci" {
		t.Errorf("binding after admin calls over TCP = %+v, %v; want it unchanged", b, err)
	}

	// On a socket, the read-only handler has no admin half either.
	readOnly := mustClient(t, New(Options{Ledger: l}))
	if _, err := readOnly.Check(context.Background()); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("check on a handler without Admin: %v, want not found", err)
	}
	if _, err := mustClient(t, full).Check(context.Background()); err != nil {
		t.Errorf("check on the admin socket: %v", err)
	}
}

// TestLedgerMaintenance ensures that backup, export, import and check work
// through the API: the backup opens as a ledger, and an export imported into
// an empty ledger exports to the same bytes.
func TestLedgerMaintenance(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	src := mustLedger(t)
	c := mustClient(t, New(Options{Ledger: src, Admin: true}))

	var backup bytes.Buffer
	if n, err := c.Backup(ctx, &backup); err != nil || n == 0 {
		t.Fatalf("Backup = %d, %v", n, err)
	}
	path := filepath.Join(t.TempDir(), "backup.db")
	if err := os.WriteFile(path, backup.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	restored, err := bolt.Open(path, bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if b, err := restored.Binding(ctx, "team/app", "1.0"); err != nil || len(b.Manifest) == 0 {
		t.Errorf("backup binding = %+v, %v", b, err)
	}
	_ = restored.Close()

	var export bytes.Buffer
	if err := c.Export(ctx, &export); err != nil {
		t.Fatal(err)
	}
	dst, err := bolt.Open(filepath.Join(t.TempDir(), "dst.db"), bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	dc := mustClient(t, New(Options{Ledger: dst, Admin: true}))
	st, err := dc.Import(ctx, bytes.NewReader(export.Bytes()), storage.ImportOptions{})
	if err != nil || st.Bindings != 1 || st.Events != 2 {
		t.Fatalf("Import = %+v, %v", st, err)
	}
	var again bytes.Buffer
	if err := dc.Export(ctx, &again); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(export.Bytes(), again.Bytes()) {
		t.Errorf("export after import differs:\n%s\n---\n%s", export.Bytes(), again.Bytes())
	}
	if problems, err := dc.Check(ctx); err != nil || len(problems) != 0 {
		t.Errorf("Check = %v, %v; want clean", problems, err)
	}
	if _, err := dc.Import(ctx, bytes.NewReader([]byte(`{"type":"nonsense"}`+"\n")), storage.ImportOptions{}); !errors.Is(err, ErrInvalidRequest) {
		t.Errorf("Import of a bad record: %v, want an invalid-request error", err)
	}
}

// TestRunVerify ensures that verify with repair repairs the findings and
// verifies again, and that without tools the API answers ErrNoUpstream.
func TestRunVerify(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tools := &fakeTools{report: proxy.VerifyReport{Findings: []proxy.Finding{{Repo: "a", Tag: "1", Kind: proxy.DriftMoved, Immutable: true}}}}
	c := mustClient(t, New(Options{Ledger: mustLedger(t), Tools: tools, Admin: true}))
	res, err := c.RunVerify(ctx, VerifyRequest{Repair: true})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Report.ImmutableDrift() || len(res.Repairs) != 1 || res.After == nil || res.Final().ImmutableDrift() {
		t.Errorf("RunVerify = %+v, want drift, one repair and a clean re-verify", res)
	}
	if tools.verifys != 2 || tools.repairs != 1 {
		t.Errorf("verify ran %d times and repair %d, want 2 and 1", tools.verifys, tools.repairs)
	}
	if _, err := c.RunVerify(ctx, VerifyRequest{Repositories: []string{"bad pattern"}}); !errors.Is(err, ErrInvalidRequest) {
		t.Errorf("RunVerify with a bad glob: %v, want ErrInvalidRequest", err)
	}
	if rep, err := c.RunImport(ctx, ImportRequest{Repositories: []string{"a/**", "b"}}); err != nil || rep.Repositories != 2 {
		t.Errorf("RunImport = %+v, %v; want the two globs passed on", rep, err)
	}

	bare := mustClient(t, New(Options{Ledger: mustLedger(t), Admin: true}))
	if _, err := bare.RunImport(ctx, ImportRequest{}); !errors.Is(err, ErrNoUpstream) {
		t.Errorf("RunImport without tools: %v, want ErrNoUpstream", err)
	}
}

// TestSplitRef ensures that references split at the tag's colon, not at a
// registry port.
func TestSplitRef(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in        string
		repo, tag string
		ok        bool
	}{
		{"app:1.0", "app", "1.0", true},
		{"team/app:v1", "team/app", "v1", true},
		{"host:5000/app", "", "", false},
		{"app", "", "", false},
		{"app:", "", "", false},
		{":1.0", "", "", false},
	}
	for _, tc := range tests {
		repo, tag, ok := SplitRef(tc.in)
		if repo != tc.repo || tag != tc.tag || ok != tc.ok {
			t.Errorf("SplitRef(%q) = %q, %q, %v; want %q, %q, %v", tc.in, repo, tag, ok, tc.repo, tc.tag, tc.ok)
		}
	}
}

// onlyRepo sees one repository and all its tags.
type onlyRepo string

func (o onlyRepo) Repo(repo string) bool   { return repo == string(o) }
func (o onlyRepo) Tag(repo, _ string) bool { return repo == string(o) }

// TestDriftShowsOnlyWhatTheCallerSees ensures GET drift leaves out the
// findings of repositories the caller's Viewer hides.
func TestDriftShowsOnlyWhatTheCallerSees(t *testing.T) {
	t.Parallel()
	findings := []proxy.Finding{{Repo: "team/app", Tag: "1.0", Kind: "moved"}, {Repo: "secret/db", Tag: "2.0", Kind: "deleted"}}
	status := func() DriftStatus {
		return DriftStatus{Schedule: "1h0m0s", Last: &DriftRun{Report: proxy.VerifyReport{Findings: findings}}}
	}
	h := New(Options{Ledger: mustLedger(t), Drift: status, Viewer: func(*http.Request) view.Viewer { return onlyRepo("team/app") }})
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, Prefix+"drift", nil))
	var got DriftStatus
	if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil || got.Last == nil {
		t.Fatalf("drift: %d %s (%v)", w.Code, w.Body, err)
	}
	if len(got.Last.Report.Findings) != 1 || got.Last.Report.Findings[0].Repo != "team/app" {
		t.Errorf("findings shown: %+v, want team/app's only", got.Last.Report.Findings)
	}
	if len(findings) != 2 {
		t.Errorf("filtering changed the status it was given: %+v", findings)
	}
}

// auditLog is a zerolog audit logger writing to a buffer safe to read while
// the server writes, and what it holds, one JSON object per event.
type auditLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (a *auditLog) Write(p []byte) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.buf.Write(p)
}

func (a *auditLog) logger() *zerolog.Logger {
	l := zerolog.New(a)
	return &l
}

// events returns the events with the given "event" field.
func (a *auditLog) events(t *testing.T, name string) []map[string]any {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []map[string]any
	dec := json.NewDecoder(bytes.NewReader(a.buf.Bytes()))
	for dec.More() {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			t.Fatal(err)
		}
		if m["event"] == name {
			out = append(out, m)
		}
	}
	return out
}

// TestImportContradictionAudited ensures that a ledger import line
// rebinding an immutable tag is refused over the admin socket without
// force, leaving the binding as it was, and applied with force; both are
// audited, naming the tag, both digests and the caller.
func TestImportContradictionAudited(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l := mustLedger(t)
	audit := &auditLog{}
	c := mustClient(t, New(Options{Ledger: l, Admin: true, Audit: audit.logger()}))
	before, err := l.Binding(ctx, "team/app", "1.0")
	if err != nil {
		t.Fatal(err)
	}
	forged := digest.FromString("forged")
	line := `{"type":"binding","repo":"team/app","tag":"1.0","digest":"` + forged.String() +
		`","size":1,"mode":"mutable","pushedAt":"2026-01-01T00:00:00Z","pushedBy":"mallory"}` + "\n" +
		`{"type":"binding","repo":"team/app","tag":"2.0","digest":"` + forged.String() +
		`","size":1,"mode":"mutable","pushedAt":"2026-01-01T00:00:00Z","pushedBy":"mallory"}` + "\n"

	_, err = c.Import(ctx, strings.NewReader(line), storage.ImportOptions{})
	var ce *storage.ContradictionError
	if !errors.As(err, &ce) || len(ce.Contradictions) != 1 || ce.Contradictions[0].Record != 1 || ce.Contradictions[0].Changes[0].Field != "digest" {
		t.Fatalf("import of a forged binding: %v, want one contradiction of record 1's digest", err)
	}
	if b, err := l.Binding(ctx, "team/app", "1.0"); err != nil || b.Digest != before.Digest || b.Mode != policy.Immutable {
		t.Fatalf("binding after a refused import = %s %s, %v; want %s immutable", b.Digest, b.Mode, err, before.Digest)
	}
	if _, err := l.Binding(ctx, "team/app", "2.0"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("a refused import wrote its other line: %v", err)
	}
	refused := audit.events(t, "refused")
	if len(refused) != 1 || refused[0]["reason"] != "import-contradicts-ledger" || refused[0]["recorded"] != before.Digest.String() ||
		refused[0]["digest"] != forged.String() || refused[0]["user"] != "tester on the socket" {
		t.Errorf("refusal audit = %v", refused)
	}
	if len(audit.events(t, "ledger-import-refused")) != 1 || len(audit.events(t, "ledger-imported")) != 0 {
		t.Errorf("refused import audited as %s", audit.buf.String())
	}

	st, err := c.Import(ctx, strings.NewReader(line), storage.ImportOptions{Force: true})
	if err != nil || st.Bindings != 2 || len(st.Replaced) != 1 {
		t.Fatalf("forced import = %+v, %v", st, err)
	}
	if b, err := l.Binding(ctx, "team/app", "1.0"); err != nil || b.Digest != forged {
		t.Errorf("binding after a forced import = %s, %v; want %s", b.Digest, err, forged)
	}
	replaced := audit.events(t, "binding-replaced")
	if len(replaced) != 1 || replaced[0]["tag"] != "1.0" || replaced[0]["recorded"] != before.Digest.String() || replaced[0]["digest"] != forged.String() {
		t.Errorf("replacement audit = %v", replaced)
	}
	imported := audit.events(t, "ledger-imported")
	if len(imported) != 1 || imported[0]["force"] != true || imported[0]["replaced"] != 1.0 || imported[0]["bindings"] != 2.0 {
		t.Errorf("import audit = %v", imported)
	}
}

// TestToolsAudited ensures that an import of upstream tags that adopted
// some and a verify that repaired are audited with the caller.
func TestToolsAudited(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	audit := &auditLog{}
	tools := &fakeTools{report: proxy.VerifyReport{Findings: []proxy.Finding{{Repo: "a", Tag: "1", Kind: proxy.DriftMoved, Immutable: true}}}}
	c := mustClient(t, New(Options{Ledger: mustLedger(t), Tools: tools, Admin: true, Audit: audit.logger()}))
	if _, err := c.RunImport(ctx, ImportRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.RunVerify(ctx, VerifyRequest{Repair: true}); err != nil {
		t.Fatal(err)
	}
	if ev := audit.events(t, "upstream-imported"); len(ev) != 1 || ev[0]["adopted"] != 1.0 || ev[0]["user"] != "tester on the socket" {
		t.Errorf("import audit = %v", ev)
	}
	if ev := audit.events(t, "verify-repaired"); len(ev) != 1 || ev[0]["restored"] != 1.0 || ev[0]["user"] != "tester on the socket" {
		t.Errorf("repair audit = %v", ev)
	}
}
