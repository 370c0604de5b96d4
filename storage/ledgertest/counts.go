package ledgertest

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/storage"
)

// WalkCounts counts l's tags the slow way, by reading every binding of
// every repository: what Counts must always answer.
func WalkCounts(t testing.TB, l storage.Ledger) (total storage.Counts, perRepo map[string]storage.Counts) {
	t.Helper()
	ctx := context.Background()
	repos, err := l.Repositories(ctx)
	if err != nil {
		t.Fatalf("Repositories: %v", err)
	}
	perRepo = map[string]storage.Counts{}
	for _, repo := range repos {
		bs, err := l.Bindings(ctx, repo)
		if err != nil {
			t.Fatalf("Bindings(%s): %v", repo, err)
		}
		c := storage.Counts{Repositories: 1}
		for _, b := range bs {
			c.Add(b, 1)
			total.Add(b, 1)
		}
		perRepo[repo] = c
		total.Repositories++
	}
	return total, perRepo
}

// MustCountsMatchWalk fails the test unless Counts, of the whole ledger and
// of each repository, equals what reading every binding finds, and want
// when it is not nil.
func MustCountsMatchWalk(t testing.TB, l storage.Ledger, want *storage.Counts) {
	t.Helper()
	ctx := context.Background()
	walked, perRepo := WalkCounts(t, l)
	got, err := l.Counts(ctx, "")
	if err != nil {
		t.Fatalf("Counts: %v", err)
	}
	if got != walked {
		t.Errorf("Counts = %+v, but the bindings hold %+v", got, walked)
	}
	if want != nil && walked != *want {
		t.Errorf("the bindings hold %+v, want %+v", walked, *want)
	}
	for repo, w := range perRepo {
		if got, err := l.Counts(ctx, repo); err != nil || got != w {
			t.Errorf("Counts(%s) = %+v, %v; its bindings hold %+v", repo, got, err, w)
		}
	}
	if got, err := l.Counts(ctx, "no/such/repo"); err != nil || got != (storage.Counts{}) {
		t.Errorf("Counts of a repository without bindings = %+v, %v; want zero", got, err)
	}
}

func testCounts(t *testing.T, open Opener) {
	// Counts follows every write that adds, moves, re-moods or tombstones a
	// tag, whichever method makes it, and always equals a walk of the
	// bindings: a push, a move of a mutable tag, a delete by tag and by
	// digest, a tombstone put directly, and imports, refused and forced.
	ctx := context.Background()
	l := open(t)
	counts := func(repos, imm, mut, warn, del int64) *storage.Counts {
		return &storage.Counts{Repositories: repos, Immutable: imm, Mutable: mut, Warn: warn, Deleted: del}
	}
	MustCountsMatchWalk(t, l, counts(0, 0, 0, 0, 0))

	v1, latest, nightly := NewBinding("app", "v1", "one"), NewBinding("app", "latest", "one"), NewBinding("web", "nightly", "n1")
	latest.Mode, nightly.Mode = policy.Mutable, policy.Warn
	MustPut(t, l, []storage.Binding{v1, latest, nightly})
	MustCountsMatchWalk(t, l, counts(2, 1, 1, 1, 0))

	// A push of a new tag, then a move of the mutable one.
	v2 := NewBinding("app", "v2", "two")
	r := MustReserve(t, l, storage.Reservation{Repo: "app", Tags: []string{"v2"}, Digest: v2.Digest})
	if err := l.Commit(ctx, r.ID, []storage.Binding{v2}, nil); err != nil {
		t.Fatal(err)
	}
	moved := NewBinding("app", "latest", "two")
	moved.Mode = policy.Mutable
	r = MustReserve(t, l, storage.Reservation{Repo: "app", Tags: []string{"latest"}, Digest: moved.Digest,
		Expect: map[string]storage.Seen{"latest": latest.Seen()}})
	if err := l.Commit(ctx, r.ID, []storage.Binding{moved}, nil); err != nil {
		t.Fatal(err)
	}
	MustCountsMatchWalk(t, l, counts(2, 2, 1, 1, 0))

	// A binding put again with another mode moves between the counts.
	nightly.Mode = policy.Immutable
	MustPut(t, l, []storage.Binding{nightly})
	MustCountsMatchWalk(t, l, counts(2, 3, 1, 0, 0))

	// Deletes: by tag, by digest (v2 and latest are both on "two"), and a
	// tombstone put directly; tombstoning a tombstone counts it once.
	r = MustReserve(t, l, storage.Reservation{Kind: storage.ReserveDelete, Repo: "app", Tags: []string{"v1"}, Digest: v1.Digest,
		Expect: map[string]storage.Seen{"v1": v1.Seen()}})
	if _, err := l.CommitDelete(ctx, r.ID, storage.Event{}); err != nil {
		t.Fatal(err)
	}
	MustCountsMatchWalk(t, l, counts(2, 2, 1, 0, 1))
	r = MustReserve(t, l, storage.Reservation{Kind: storage.ReserveDelete, Repo: "app", Digest: Digest("two")})
	if _, err := l.CommitDelete(ctx, r.ID, storage.Event{}); err != nil {
		t.Fatal(err)
	}
	MustCountsMatchWalk(t, l, counts(2, 1, 0, 0, 3))
	nightly.Deleted, nightly.DeletedAt = true, At(5)
	MustPut(t, l, []storage.Binding{nightly})
	MustPut(t, l, []storage.Binding{nightly})
	MustCountsMatchWalk(t, l, counts(2, 0, 0, 0, 4))

	// An import adds a repository and a tag, repeats a binding the ledger
	// holds, and, refused, changes nothing; forced, it revives a tombstone.
	other := NewBinding("base", "1.0", "base")
	revived := MustBinding(t, l, "web", "nightly")
	revived.Deleted, revived.DeletedAt = false, time.Time{}
	var stream bytes.Buffer
	x := storage.NewExportWriter(&stream)
	for _, b := range []storage.Binding{other, MustBinding(t, l, "app", "v1"), revived} {
		if err := x.Binding(b); err != nil {
			t.Fatal(err)
		}
	}
	if err := x.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Import(ctx, bytes.NewReader(stream.Bytes()), storage.ImportOptions{}); err == nil {
		t.Fatal("an import reviving a tombstone was not refused")
	}
	MustCountsMatchWalk(t, l, counts(2, 0, 0, 0, 4))
	if _, err := l.Import(ctx, bytes.NewReader(stream.Bytes()), storage.ImportOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	MustCountsMatchWalk(t, l, counts(3, 2, 0, 0, 3))
	if problems, err := l.Check(ctx); err != nil {
		t.Errorf("Check: %v %q", err, problems)
	}
}

func testCountsConcurrent(t *testing.T, open Opener) {
	// Writes that run at the same time (and may share a transaction) each
	// count their bindings once.
	l := open(t)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := range 5 {
				b := NewBinding(fmt.Sprintf("repo-%d", w%3), fmt.Sprintf("w%d-%d", w, i), fmt.Sprintf("c%d-%d", w, i))
				if i%2 == 1 {
					b.Mode = policy.Mutable
				}
				if err := l.Put(context.Background(), []storage.Binding{b}, nil); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	MustCountsMatchWalk(t, l, &storage.Counts{Repositories: 3, Immutable: 24, Mutable: 16})
}

func testPages(t *testing.T, open Opener) {
	// RepositoriesAfter, BindingsAfter, HistoryBefore and RecentBefore
	// cut the whole lists into pages: the pages of any size, each starting
	// after the last entry of the one before, add up to the whole list,
	// whatever names sort next to each other (a name that is a prefix of
	// another, punctuation that sorts below or above the separator).
	ctx := context.Background()
	l := open(t)
	repos := []string{"a", "a-b", "a/b", "a/b/c", "ab", "b"}
	names := []string{"1", "1-rc", "1.0", "10", "2", "latest"}
	var bs []storage.Binding
	var events []storage.Event
	for _, repo := range repos {
		for _, tag := range names {
			bs = append(bs, NewBinding(repo, tag, repo+":"+tag))
			kind := storage.EventAccepted
			if len(events)%3 == 0 {
				kind = storage.EventRefused
			}
			events = append(events, storage.Event{Kind: kind, Repo: repo, Tag: tag, Digest: Digest(repo + ":" + tag)})
		}
	}
	MustPut(t, l, bs, events...)

	all, err := l.Repositories(ctx)
	if err != nil {
		t.Fatal(err)
	}
	equal(t, "repositories", all, repos)
	for size := 1; size <= len(repos)+1; size++ {
		var got []string
		after := ""
		for {
			page, err := l.RepositoriesAfter(ctx, after, size)
			if err != nil {
				t.Fatal(err)
			}
			if len(page) > size {
				t.Fatalf("RepositoriesAfter(%q, %d) gave %d", after, size, len(page))
			}
			if len(page) == 0 {
				break
			}
			got = append(got, page...)
			after = page[len(page)-1]
		}
		equal(t, fmt.Sprintf("repositories in pages of %d", size), got, repos)
	}
	for _, tc := range []struct {
		after string
		want  []string
	}{
		{"", repos}, {"a", repos[1:]}, {"a.", repos[2:]}, {"a/b/", repos[3:]}, {"b", nil}, {"zzz", nil},
	} {
		got, err := l.RepositoriesAfter(ctx, tc.after, 0)
		if err != nil {
			t.Fatal(err)
		}
		equal(t, fmt.Sprintf("repositories after %q", tc.after), got, tc.want)
	}

	for _, repo := range []string{"a", "a/b"} {
		whole, err := l.Bindings(ctx, repo)
		if err != nil {
			t.Fatal(err)
		}
		equal(t, "tags of "+repo, tags(whole), names)
		for size := 1; size <= len(names); size++ {
			var got []storage.Binding
			after := ""
			for {
				page, err := l.BindingsAfter(ctx, repo, after, size)
				if err != nil {
					t.Fatal(err)
				}
				if len(page) == 0 {
					break
				}
				if len(page) > size {
					t.Fatalf("BindingsAfter(%s, %q, %d) gave %d", repo, after, size, len(page))
				}
				got = append(got, page...)
				after = page[len(page)-1].Tag
			}
			equal(t, fmt.Sprintf("bindings of %s in pages of %d", repo, size), got, whole)
		}
		page, err := l.BindingsAfter(ctx, repo, "1.", 2)
		if err != nil {
			t.Fatal(err)
		}
		equal(t, "the two tags after 1.", tags(page), []string{"1.0", "10"})
	}

	type lister func(before uint64, limit int) ([]storage.Event, error)
	for name, list := range map[string]lister{
		"history of a/b": func(before uint64, limit int) ([]storage.Event, error) {
			return l.HistoryBefore(ctx, "a/b", "", before, limit)
		},
		"history of a:1": func(before uint64, limit int) ([]storage.Event, error) {
			return l.HistoryBefore(ctx, "a", "1", before, limit)
		},
		"refusals": func(before uint64, limit int) ([]storage.Event, error) {
			return l.RecentBefore(ctx, storage.EventRefused, before, limit)
		},
		"every event": func(before uint64, limit int) ([]storage.Event, error) {
			return l.RecentBefore(ctx, "", before, limit)
		},
	} {
		whole, err := list(0, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(whole) == 0 || !slices.IsSortedFunc(whole, func(a, b storage.Event) int { return int(b.Seq) - int(a.Seq) }) {
			t.Fatalf("%s: %v, want events newest first", name, seqNums(whole))
		}
		for size := 1; size <= 4; size++ {
			var got []storage.Event
			var before uint64
			for {
				page, err := list(before, size)
				if err != nil {
					t.Fatal(err)
				}
				if len(page) == 0 {
					break
				}
				if len(page) > size {
					t.Fatalf("%s before %d: %d events, want at most %d", name, before, len(page), size)
				}
				got = append(got, page...)
				before = page[len(page)-1].Seq
			}
			equal(t, fmt.Sprintf("%s in pages of %d", name, size), seqNums(got), seqNums(whole))
		}
		if page, err := list(whole[len(whole)-1].Seq, 0); err != nil || len(page) != 0 {
			t.Errorf("%s before its oldest event: %v, %v; want none", name, seqNums(page), err)
		}
		if page, err := list(whole[0].Seq+100, 0); err != nil || len(page) != len(whole) {
			t.Errorf("%s before a sequence past the last: %d events, %v; want all %d", name, len(page), err, len(whole))
		}
	}
}

func seqNums(es []storage.Event) []uint64 {
	out := make([]uint64, len(es))
	for i, e := range es {
		out[i] = e.Seq
	}
	return out
}
