package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/taglock/taglock/internal/view"
	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/storage"
	"github.com/taglock/taglock/storage/bolt"
)

// bigLedger holds 250 repositories (repo-000 to repo-249) of one tag each,
// and repo-000 holds 250 tags (t-000 to t-249), each with one accepted
// event, and every fifth event is a refusal.
func bigLedger(t *testing.T) storage.Ledger {
	t.Helper()
	l, err := bolt.Open(filepath.Join(t.TempDir(), "ledger.db"), bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	var bs []storage.Binding
	var ev []storage.Event
	for i := range 250 {
		for _, ref := range [][2]string{{fmt.Sprintf("repo-%03d", i), "v1"}, {"repo-000", fmt.Sprintf("t-%03d", i)}} {
			d := digest.FromString(ref[0] + ":" + ref[1])
			bs = append(bs, storage.Binding{Repo: ref[0], Tag: ref[1], Digest: d, Mode: policy.Immutable, PushedAt: time.Unix(1700000000, 0).UTC(), PushedBy: "ci"})
		}
		kind := storage.EventAccepted
		if i%5 == 0 {
			kind = storage.EventRefused
		}
		ev = append(ev, storage.Event{Kind: kind, Repo: "repo-000", Tag: "t-000", Digest: digest.FromString(fmt.Sprint(i))})
	}
	if err := l.Put(context.Background(), bs, ev); err != nil {
		t.Fatal(err)
	}
	return l
}

// getPage GETs path from h and decodes the answer into v; it returns the
// Link header.
func getPage(t *testing.T, h http.Handler, path string, v any) string {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("GET %s: %d %s", path, rec.Code, rec.Body)
	}
	if err := json.Unmarshal(rec.Body.Bytes(), v); err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return rec.Header().Get("Link")
}

// everyOther sees the even-numbered repositories, and of repo-000 the
// even-numbered tags.
type everyOther struct{}

func (everyOther) Repo(repo string) bool { return (repo[len(repo)-1]-'0')%2 == 0 }
func (v everyOther) Tag(repo, tag string) bool {
	return v.Repo(repo) && (tag == "v1" || (tag[len(tag)-1]-'0')%2 == 0)
}

// TestRepositoriesInPages ensures GET repositories answers 100
// repositories at a time, sorted, with the next page's URL in "next" and
// in a Link header, until the last page, which has neither; that ?n= sets
// the page size up to 1000; and that a caller who sees part of the ledger
// gets full pages of what it sees, whose links name only what it sees.
func TestRepositoriesInPages(t *testing.T) {
	t.Parallel()
	l := bigLedger(t)
	h := New(Options{Ledger: l})
	var all []string
	path := Prefix + "repositories"
	for pages := 1; ; pages++ {
		var r RepositoriesResponse
		link := getPage(t, h, path, &r)
		all = append(all, r.Repositories...)
		if r.Next == "" {
			if link != "" || pages != 3 || len(r.Repositories) != 50 {
				t.Errorf("last page: %d repositories, Link %q, after %d pages; want 50, no Link, 3 pages", len(r.Repositories), link, pages)
			}
			break
		}
		if len(r.Repositories) != view.DefaultPage || link != "<"+r.Next+`>; rel="next"` {
			t.Fatalf("page %d: %d repositories, next %q, Link %q", pages, len(r.Repositories), r.Next, link)
		}
		path = r.Next
	}
	want, _ := l.Repositories(context.Background())
	if !slices.Equal(all, want) {
		t.Errorf("pages add up to %d repositories, want the %d of the ledger", len(all), len(want))
	}

	var r RepositoriesResponse
	getPage(t, h, Prefix+"repositories?n=5000", &r)
	if len(r.Repositories) != 250 || r.Next != "" {
		t.Errorf("n=5000: %d repositories, next %q; want all 250 (under the cap of 1000)", len(r.Repositories), r.Next)
	}
	getPage(t, h, Prefix+"repositories?n=7&last=repo-100", &r)
	if strings.Join(r.Repositories, ",") != "repo-101,repo-102,repo-103,repo-104,repo-105,repo-106,repo-107" ||
		r.Next != Prefix+"repositories?last=repo-107&n=7" {
		t.Errorf("n=7 after repo-100: %v, next %q", r.Repositories, r.Next)
	}

	seen := New(Options{Ledger: l, Viewer: func(*http.Request) view.Viewer { return everyOther{} }})
	getPage(t, seen, Prefix+"repositories?n=10&last=repo-100", &r)
	if len(r.Repositories) != 10 || r.Repositories[0] != "repo-102" || r.Repositories[9] != "repo-120" || !strings.Contains(r.Next, "last=repo-120") {
		t.Errorf("a caller who sees every other repository: %v, next %q", r.Repositories, r.Next)
	}
}

// TestTagsInPages ensures a repository's tags come 100 at a time by tag,
// following "next" to the end, a caller who sees some tags gets pages of
// those, and an unknown repository is still 404.
func TestTagsInPages(t *testing.T) {
	t.Parallel()
	l := bigLedger(t)
	h := New(Options{Ledger: l})
	var tags []string
	for path := Prefix + "repositories/repo-000/tags"; path != ""; {
		var r TagsResponse
		getPage(t, h, path, &r)
		if len(r.Tags) > view.DefaultPage || r.Repository != "repo-000" {
			t.Fatalf("%s: %d tags of %q", path, len(r.Tags), r.Repository)
		}
		for _, b := range r.Tags {
			tags = append(tags, b.Tag)
		}
		path = r.Next
	}
	if len(tags) != 251 || tags[0] != "t-000" || tags[250] != "v1" || !slices.IsSorted(tags) {
		t.Errorf("pages add up to %d tags (%s … %s), want the 251 of repo-000 in order", len(tags), tags[0], tags[len(tags)-1])
	}

	seen := New(Options{Ledger: l, Viewer: func(*http.Request) view.Viewer { return everyOther{} }})
	var r TagsResponse
	getPage(t, seen, Prefix+"repositories/repo-000/tags?n=3&last=t-010", &r)
	if len(r.Tags) != 3 || r.Tags[0].Tag != "t-012" || r.Tags[2].Tag != "t-016" || !strings.Contains(r.Next, "last=t-016") {
		t.Errorf("a caller who sees every other tag: %+v, next %q", r.Tags, r.Next)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, Prefix+"repositories/no/such/tags", nil))
	if rec.Code != http.StatusNotFound {
		t.Errorf("an unknown repository: %d, want 404", rec.Code)
	}
}

// TestHistoryInPages ensures history, a binding's history and refusals
// come newest first, 100 (refusals 50) at a time, each page's "next"
// naming the sequence number to go on from, until every event was shown
// once; that ?limit= still sets the size; and that a cursor that is not a
// sequence number is 400.
func TestHistoryInPages(t *testing.T) {
	t.Parallel()
	h := New(Options{Ledger: bigLedger(t)})
	follow := func(path string, size int) []uint64 {
		var seqs []uint64
		for path != "" {
			var r EventsResponse
			getPage(t, h, path, &r)
			if len(r.Events) > size {
				t.Fatalf("%s: %d events, want at most %d", path, len(r.Events), size)
			}
			for _, e := range r.Events {
				seqs = append(seqs, e.Seq)
			}
			path = r.Next
		}
		return seqs
	}
	newestFirst := func(n int, from, step uint64) []uint64 {
		var out []uint64
		for s := from; len(out) < n; s -= step {
			out = append(out, s)
		}
		return out
	}
	if got := follow(Prefix+"history?repo=repo-000&tag=t-000", view.DefaultPage); !slices.Equal(got, newestFirst(250, 250, 1)) {
		t.Errorf("history pages: %d events %v…, want 250 to 1", len(got), got[:3])
	}
	if got := follow(Prefix+"history?repo=repo-000&limit=30", 30); !slices.Equal(got, newestFirst(250, 250, 1)) {
		t.Errorf("history pages of limit=30: %d events, want 250", len(got))
	}
	if got := follow(Prefix+"refusals", DefaultRefusals); !slices.Equal(got, newestFirst(50, 246, 5)) {
		t.Errorf("refusal pages: %v, want the 50 refusals (every fifth event) newest first", got)
	}

	var b BindingResponse
	getPage(t, h, Prefix+"bindings/repo-000:t-000", &b)
	if len(b.History) != view.DefaultPage || b.History[0].Seq != 250 || b.Next != Prefix+"history?last=151&n=100&repo=repo-000&tag=t-000" {
		t.Errorf("binding: %d events from %d, next %q", len(b.History), b.History[0].Seq, b.Next)
	}
	if got := follow(b.Next, view.DefaultPage); !slices.Equal(got, newestFirst(250, 250, 1)[100:]) {
		t.Errorf("the binding's next pages: %d events, want the 150 older ones", len(got))
	}
	for _, path := range []string{Prefix + "history?repo=repo-000&last=abc", Prefix + "refusals?last=0", Prefix + "refusals?n=-1"} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		if rec.Code != http.StatusBadRequest {
			t.Errorf("GET %s: %d, want 400", path, rec.Code)
		}
	}
}

// TestClientReadsEveryPage ensures the commands' client returns whole
// lists over the paginated API: every repository, every tag, and history
// up to the limit asked or all of it.
func TestClientReadsEveryPage(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := mustClient(t, New(Options{Ledger: bigLedger(t)}))
	if repos, err := c.Repositories(ctx); err != nil || len(repos) != 250 {
		t.Errorf("Repositories: %d, %v; want 250", len(repos), err)
	}
	if bs, err := c.Bindings(ctx, "repo-000"); err != nil || len(bs) != 251 {
		t.Errorf("Bindings: %d, %v; want 251", len(bs), err)
	}
	for _, tc := range []struct{ limit, want int }{{0, 250}, {120, 120}, {1500, 250}} {
		if ev, err := c.History(ctx, "repo-000", "t-000", tc.limit); err != nil || len(ev) != tc.want || ev[0].Seq != 250 {
			t.Errorf("History limit %d: %d events, %v; want %d newest first", tc.limit, len(ev), err, tc.want)
		}
	}
	if ev, err := c.Recent(ctx, storage.EventRefused, 0); err != nil || len(ev) != 50 {
		t.Errorf("Recent refusals: %d, %v; want 50", len(ev), err)
	}
}
