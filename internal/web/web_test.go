package web

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/storage"
	"github.com/taglock/taglock/storage/bolt"
)

// seeded is a ledger with two repositories, a deleted tag, a refusal whose
// message tries to inject markup, and some history.
func seeded(t *testing.T) storage.Ledger {
	t.Helper()
	l, err := bolt.Open(filepath.Join(t.TempDir(), "ledger.db"), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	at := time.Date(2026, 11, 20, 9, 30, 0, 0, time.UTC)
	ctx := context.Background()
	bs := []storage.Binding{
		{Repo: "team/app", Tag: "1.0.0", Digest: digest.FromString("one"), Mode: policy.Immutable, Rule: "immutability.default", PushedAt: at, PushedBy: "ci-bot", Size: 523},
		{Repo: "team/app", Tag: "latest", Digest: digest.FromString("two"), Mode: policy.Mutable, Rule: "immutability.rules[0]", PushedAt: at.Add(time.Hour), PushedBy: "alice"},
		{Repo: "team/app", Tag: "0.9.0", Digest: digest.FromString("old"), Mode: policy.Immutable, PushedAt: at.Add(-time.Hour), PushedBy: "ci-bot", Deleted: true, DeletedAt: at},
		{Repo: "tools/debug", Tag: "0.2", Digest: digest.FromString("dbg"), Mode: policy.Warn, PushedAt: at, PushedBy: "bob"},
	}
	events := []storage.Event{
		{Time: at, Kind: storage.EventAccepted, Repo: "team/app", Tag: "1.0.0", Digest: digest.FromString("one"), User: "ci-bot"},
		{Time: at.Add(2 * time.Hour), Kind: storage.EventRefused, Repo: "team/app", Tag: "1.0.0", Digest: digest.FromString("evil"),
			Previous: digest.FromString("one"), User: "mallory", Rule: "immutability.default", Reason: "immutable-tag-moved",
			Message: `tag is immutable <script>alert("x")</script>`},
	}
	if err := l.Put(ctx, bs, events); err != nil {
		t.Fatal(err)
	}
	return l
}

func get(t *testing.T, h http.Handler, path string) (int, string, http.Header) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	b, _ := io.ReadAll(rec.Body)
	return rec.Code, string(b), rec.Header()
}

// TestPages ensures each page shows what the ledger holds: the front page
// lists repositories with tag counts and recent refusals, a repository page
// lists tags with full digests, mode and first push (tombstones marked), a
// tag page shows the binding and its history, markup in recorded messages
// is escaped, and unknown names are 404.
func TestPages(t *testing.T) {
	t.Parallel()
	h := New(Options{Ledger: seeded(t)})
	tests := []struct {
		path   string
		status int
		want   []string
		absent []string
	}{
		{"/taglock/", http.StatusOK,
			[]string{`<a href="/taglock/repos/team/app">team/app</a></td><td>2</td><td>1</td>`, `href="/taglock/repos/tools/debug"`,
				"2 repositories, 3 tags", `<a href="/taglock/repos/team/app:1.0.0">team/app:1.0.0</a>`, "mallory", "immutable-tag-moved",
				short(digest.FromString("evil")), `href="/taglock/static/style.css"`},
			[]string{"<script>"}},
		{"/taglock/repos/team/app", http.StatusOK,
			[]string{digest.FromString("one").String(), digest.FromString("two").String(), `<span class="badge immutable">immutable</span>`,
				`<span class="badge mutable">mutable</span>`, "2026-11-20 09:30:00Z", "ci-bot", `0.9.0</a> <span class="badge deleted">deleted</span>`,
				"&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;"},
			[]string{"<script>"}},
		{"/taglock/repos/team/app:1.0.0", http.StatusOK,
			[]string{"<h1>team/app:1.0.0</h1>", digest.FromString("one").String(), "2026-11-20 09:30:00Z by ci-bot", "immutability.default",
				`<span class="badge refused">refused</span>`, `<span class="badge accepted">accepted</span>`, "mallory"},
			[]string{"<script>"}},
		{"/taglock/repos/tools/debug:0.2", http.StatusOK, []string{`<span class="badge warn">warn</span>`, "bob"}, nil},
		{"/taglock/repos/team/app:9.9", http.StatusNotFound, []string{"not in the ledger"}, nil},
		{"/taglock/repos/no/such", http.StatusNotFound, nil, nil},
		{"/taglock/static/style.css", http.StatusOK, []string{".immutable"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			code, body, hdr := get(t, h, tc.path)
			if code != tc.status {
				t.Fatalf("status %d, want %d\n%s", code, tc.status, body)
			}
			for _, w := range tc.want {
				if !strings.Contains(body, w) {
					t.Errorf("page lacks %q:\n%s", w, body)
				}
			}
			for _, a := range tc.absent {
				if strings.Contains(body, a) {
					t.Errorf("page contains %q", a)
				}
			}
			if code == http.StatusOK && strings.HasSuffix(tc.path, "/") && !strings.Contains(hdr.Get("Content-Security-Policy"), "default-src 'none'") {
				t.Errorf("no strict Content-Security-Policy: %q", hdr.Get("Content-Security-Policy"))
			}
		})
	}
}

// TestEmptyLedger ensures a fresh ledger renders a front page that says so
// rather than failing.
func TestEmptyLedger(t *testing.T) {
	t.Parallel()
	l, err := bolt.Open(filepath.Join(t.TempDir(), "ledger.db"), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	code, body, _ := get(t, New(Options{Ledger: l}), "/taglock/")
	if code != http.StatusOK || !strings.Contains(body, "Nothing pushed through taglock yet.") || !strings.Contains(body, "No refusals recorded.") {
		t.Errorf("status %d:\n%s", code, body)
	}
}

// failing is a ledger that cannot be read.
type failing struct{ Ledger }

func (failing) RepositoriesAfter(context.Context, string, int) ([]string, error) {
	return nil, storage.ErrCorrupt
}

// TestLedgerFailure ensures a ledger that cannot be read gives 503, not a
// half-rendered page.
func TestLedgerFailure(t *testing.T) {
	t.Parallel()
	code, body, _ := get(t, New(Options{Ledger: failing{}}), "/taglock/")
	if code != http.StatusServiceUnavailable || strings.Contains(body, "<html") {
		t.Errorf("status %d:\n%s", code, body)
	}
}
