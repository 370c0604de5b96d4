package web

import (
	"context"
	"fmt"
	"html"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/taglock/taglock/internal/view"
	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/storage"
	"github.com/taglock/taglock/storage/bolt"
)

// crowded is a ledger of 120 repositories (app-000 … app-119) of two tags,
// one immutable and one mutable, and big/repo with 700 immutable tags
// (t-000 … t-699), the last 100 of them tombstones.
func crowded(t *testing.T) storage.Ledger {
	t.Helper()
	l, err := bolt.Open(filepath.Join(t.TempDir(), "ledger.db"), bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	at := time.Date(2026, 11, 20, 9, 30, 0, 0, time.UTC)
	var bs []storage.Binding
	add := func(repo, tag string, mode policy.Mode, deleted bool) {
		bs = append(bs, storage.Binding{Repo: repo, Tag: tag, Digest: digest.FromString(repo + tag), Mode: mode, PushedAt: at, PushedBy: "ci", Deleted: deleted})
	}
	for i := range 120 {
		add(fmt.Sprintf("app-%03d", i), "1.0", policy.Immutable, false)
		add(fmt.Sprintf("app-%03d", i), "latest", policy.Mutable, false)
	}
	for i := range 700 {
		add("big/repo", fmt.Sprintf("t-%03d", i), policy.Immutable, i >= 600)
	}
	for len(bs) > 0 {
		n := min(len(bs), 100)
		if err := l.Put(context.Background(), bs[:n], nil); err != nil {
			t.Fatal(err)
		}
		bs = bs[n:]
	}
	return l
}

var (
	repoRow  = regexp.MustCompile(`<tr><td><a href="/taglock/repos/([^"]+)">[^<]+</a></td><td>([0-9+]+)</td><td>([0-9+]+)</td></tr>`)
	tagRow   = regexp.MustCompile(`<td class="nowrap"><a href="/taglock/repos/[^"]+:([^"]+)">`)
	nextLink = regexp.MustCompile(`<a href="([^"]+)">Next page</a>`)
)

// follow reads a paginated page and every page after it, and returns the
// matches of row on each.
func follow(t *testing.T, h http.Handler, path string, row *regexp.Regexp) [][][]string {
	t.Helper()
	var pages [][][]string
	for path != "" {
		code, body, _ := get(t, h, path)
		if code != http.StatusOK {
			t.Fatalf("GET %s: %d\n%s", path, code, body)
		}
		pages = append(pages, row.FindAllStringSubmatch(body, -1))
		path = ""
		if m := nextLink.FindStringSubmatch(body); m != nil {
			path = html.UnescapeString(m[1])
		}
	}
	return pages
}

// TestFrontPageInPages ensures the front page lists 50 repositories at a
// time, each with its live and immutable tag counts, the whole ledger's
// totals on top, and a "Next page" link to the next 50 until the last.
func TestFrontPageInPages(t *testing.T) {
	t.Parallel()
	h := New(Options{Ledger: crowded(t)})
	_, body, _ := get(t, h, "/taglock/")
	if !strings.Contains(body, "121 repositories, 840 tags") {
		t.Errorf("the front page lacks the ledger's totals:\n%s", body)
	}
	pages := follow(t, h, "/taglock/", repoRow)
	var names []string
	for i, rows := range pages {
		if want := []int{ReposPerPage, ReposPerPage, 21}[min(i, 2)]; len(rows) != want || len(pages) != 3 {
			t.Fatalf("page %d of %d lists %d repositories, want %d of 3 pages", i+1, len(pages), len(rows), want)
		}
		for _, r := range rows {
			names = append(names, r[1])
			if want := map[bool][2]string{false: {"2", "1"}, true: {"600", "600"}}[r[1] == "big/repo"]; r[2] != want[0] || r[3] != want[1] {
				t.Errorf("%s counts %s tags, %s immutable; want %s and %s", r[1], r[2], r[3], want[0], want[1])
			}
		}
	}
	if len(names) != 121 || names[0] != "app-000" || names[120] != "big/repo" {
		t.Errorf("the pages list %d repositories, %v … %v", len(names), names[0], names[len(names)-1])
	}
}

// TestRepositoryPageInPages ensures a repository page lists 100 tags at a
// time, in order, with the repository's total, and pages on to the last.
func TestRepositoryPageInPages(t *testing.T) {
	t.Parallel()
	h := New(Options{Ledger: crowded(t)})
	_, body, _ := get(t, h, "/taglock/repos/big/repo")
	if !strings.Contains(body, "big/repo · 700 tags") {
		t.Errorf("the repository page lacks its total:\n%s", body)
	}
	pages := follow(t, h, "/taglock/repos/big/repo", tagRow)
	if len(pages) != 7 {
		t.Fatalf("%d pages, want 7", len(pages))
	}
	var tags []string
	for _, rows := range pages {
		for _, r := range rows {
			tags = append(tags, r[1])
		}
	}
	if len(tags) != 700 || tags[0] != "t-000" || tags[699] != "t-699" {
		t.Errorf("the pages list %d tags", len(tags))
	}
}

// oddTags sees every repository, and of each only the tags whose last
// character is an odd digit (or "latest").
type oddTags struct{}

func (oddTags) Repo(string) bool { return true }
func (oddTags) Tag(_, tag string) bool {
	return tag == "latest" || strings.IndexByte("13579", tag[len(tag)-1]) >= 0
}

// TestFrontPageForACallerWhoSeesPart ensures a caller who may not see every
// tag gets no ledger totals, and per repository the count of the tags it
// sees among the first CountLimit, marked "+" when the repository holds
// more.
func TestFrontPageForACallerWhoSeesPart(t *testing.T) {
	t.Parallel()
	h := New(Options{Ledger: crowded(t), Viewer: func(*http.Request) view.Viewer { return oddTags{} }})
	pages := follow(t, h, "/taglock/", repoRow)
	_, body, _ := get(t, h, "/taglock/")
	if strings.Contains(body, "121 repositories") || !strings.Contains(body, "The repositories you may pull from.") {
		t.Errorf("a caller who sees part of the ledger was shown its totals:\n%s", body)
	}
	last := pages[len(pages)-1]
	big := last[len(last)-1]
	if big[1] != "big/repo" || big[2] != "250+" || big[3] != "250+" {
		t.Errorf("big/repo row %q, want 250+ tags seen among the first %d", big[0], CountLimit)
	}
	if first := pages[0][0]; first[2] != "1" || first[3] != "0" {
		t.Errorf("app-000 row %q, want the one tag seen (latest, mutable)", first[0])
	}
}
