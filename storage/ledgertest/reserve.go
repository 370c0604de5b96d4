package ledgertest

import (
	"context"
	"errors"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"

	"github.com/taglock/taglock/storage"
)

func testReserveExpect(t *testing.T, open Opener) {
	// Reserve succeeds only when the caller's expectation matches the live
	// binding digest, where a non-immutable tombstone counts as no binding
	// and an immutable tombstone keeps its digest.
	d1, d2 := Digest("one"), Digest("two")
	tombstone := func(mode string) storage.Binding {
		b := NewBinding("r", "t", "one")
		b.Mode, b.Deleted, b.DeletedAt = mode, true, At(1)
		return b
	}
	tests := []struct {
		name    string
		binding *storage.Binding
		expect  digest.Digest
		actual  digest.Digest // when ErrChanged is wanted
		changed bool
	}{
		{name: "unbound, expect none", expect: ""},
		{name: "unbound, expect a digest", expect: d1, changed: true},
		{name: "bound, expect none", binding: ptr(NewBinding("r", "t", "one")), expect: "", actual: d1, changed: true},
		{name: "bound, expect it", binding: ptr(NewBinding("r", "t", "one")), expect: d1},
		{name: "bound, expect another", binding: ptr(NewBinding("r", "t", "one")), expect: d2, actual: d1, changed: true},
		{name: "mutable tombstone, expect none", binding: ptr(tombstone(storage.ModeMutable)), expect: ""},
		{name: "mutable tombstone, expect its digest", binding: ptr(tombstone(storage.ModeMutable)), expect: d1, changed: true},
		{name: "warn tombstone, expect none", binding: ptr(tombstone(storage.ModeWarn)), expect: ""},
		{name: "immutable tombstone, expect none", binding: ptr(tombstone(storage.ModeImmutable)), expect: "", actual: d1, changed: true},
		{name: "immutable tombstone, expect its digest", binding: ptr(tombstone(storage.ModeImmutable)), expect: d1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			l := open(t)
			if tc.binding != nil {
				MustPut(t, l, []storage.Binding{*tc.binding})
			}
			r, err := l.Reserve(ctx, storage.Reservation{
				Repo: "r", Tags: []string{"ok", "t"}, Digest: d2,
				Expect: map[string]digest.Digest{"t": tc.expect},
			})
			pending, perr := l.Reservations(ctx)
			if perr != nil {
				t.Fatal(perr)
			}
			if !tc.changed {
				if err != nil {
					t.Fatalf("Reserve: %v", err)
				}
				if len(r.ID) != 32 || strings.Trim(r.ID, "0123456789abcdef") != "" || r.CreatedAt.IsZero() {
					t.Errorf("Reserve returned ID %q CreatedAt %v; want 32 hex digits and a time", r.ID, r.CreatedAt)
				}
				equal(t, "pending reservations", pending, []storage.Reservation{r})
				return
			}
			var ce *storage.ChangedError
			if !errors.Is(err, storage.ErrChanged) || !errors.As(err, &ce) {
				t.Fatalf("Reserve: err = %v, want ErrChanged as *ChangedError", err)
			}
			equal(t, "ChangedError", *ce, storage.ChangedError{Repo: "r", Tag: "t", Expected: tc.expect, Actual: tc.actual})
			if !strings.Contains(err.Error(), "r:t") {
				t.Errorf("error %q does not name the tag", err)
			}
			equal(t, "pending reservations after a failed Reserve", len(pending), 0)
		})
	}
}

func ptr[T any](v T) *T { return &v }

func testReserveBusy(t *testing.T, open Opener) {
	// A pending reservation blocks other digests from its tags, not the same
	// digest, and a refused Reserve stores nothing.
	ctx := context.Background()
	l := open(t)
	d1, d2 := Digest("one"), Digest("two")
	first := MustReserve(t, l, storage.Reservation{Repo: "r", Tags: []string{"v1", "latest"}, Digest: d1})

	_, err := l.Reserve(ctx, storage.Reservation{Repo: "r", Tags: []string{"v2", "latest"}, Digest: d2})
	var be *storage.BusyError
	if !errors.Is(err, storage.ErrBusy) || !errors.As(err, &be) {
		t.Fatalf("Reserve of a reserved tag with another digest: err = %v, want ErrBusy as *BusyError", err)
	}
	if be.Repo != "r" || be.Tag != "latest" || be.Digest != d1 || !be.Since.Equal(first.CreatedAt) {
		t.Errorf("BusyError = %+v, want r:latest held by %s since %v", *be, d1, first.CreatedAt)
	}

	same := MustReserve(t, l, storage.Reservation{Repo: "r", Tags: []string{"latest"}, Digest: d1})
	MustReserve(t, l, storage.Reservation{Repo: "r", Tags: []string{"v2"}, Digest: d2})
	MustReserve(t, l, storage.Reservation{Repo: "other", Tags: []string{"latest"}, Digest: d2})

	pending, err := l.Reservations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range pending {
		got = append(got, r.Repo+":"+strings.Join(r.Tags, ","))
	}
	equal(t, "pending reservations, oldest first", got, []string{"r:v1,latest", "r:latest", "r:v2", "other:latest"})

	if err := l.Release(ctx, first.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Reserve(ctx, storage.Reservation{Repo: "r", Tags: []string{"latest"}, Digest: d2}); !errors.Is(err, storage.ErrBusy) {
		t.Errorf("with a same-digest reservation still pending: err = %v, want ErrBusy", err)
	}
	if err := l.Release(ctx, same.ID); err != nil {
		t.Fatal(err)
	}
	MustReserve(t, l, storage.Reservation{Repo: "r", Tags: []string{"latest"}, Digest: d2})
}

func testCommitAndRelease(t *testing.T, open Opener) {
	// Commit turns a reservation into bindings and events exactly once;
	// Release frees tags and is idempotent.
	ctx := context.Background()
	l := open(t)
	b := NewBinding("r", "v1", "one")
	r := MustReserve(t, l, storage.Reservation{Repo: "r", Tags: []string{"v1"}, Digest: b.Digest})
	ev := storage.Event{Kind: storage.EventAccepted, Repo: "r", Tag: "v1", Digest: b.Digest, User: "ci", RequestID: "req-1"}
	if err := l.Commit(ctx, r.ID, []storage.Binding{b}, []storage.Event{ev}); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	equal(t, "committed binding", MustBinding(t, l, "r", "v1"), b)
	hist, err := l.History(ctx, "r", "v1", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(hist) != 1 || hist[0].Seq == 0 || hist[0].Time.IsZero() || hist[0].RequestID != "req-1" {
		t.Errorf("history after Commit = %+v, want the accepted event with Seq and Time filled", hist)
	}
	if pending, _ := l.Reservations(ctx); len(pending) != 0 {
		t.Errorf("Commit left reservations %+v", pending)
	}

	other := NewBinding("r", "v2", "two")
	if err := l.Commit(ctx, r.ID, []storage.Binding{other}, []storage.Event{ev}); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("second Commit: err = %v, want ErrNotFound", err)
	}
	if _, err := l.Binding(ctx, "r", "v2"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("a refused Commit wrote its binding: err = %v", err)
	}
	if hist, _ := l.History(ctx, "r", "", 0); len(hist) != 1 {
		t.Errorf("a refused Commit appended events: %+v", hist)
	}

	r2 := MustReserve(t, l, storage.Reservation{Repo: "r", Tags: []string{"v2"}, Digest: other.Digest})
	for range 2 {
		if err := l.Release(ctx, r2.ID); err != nil {
			t.Fatalf("Release: %v", err)
		}
	}
	if err := l.Commit(ctx, r2.ID, []storage.Binding{other}, nil); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Commit after Release: err = %v, want ErrNotFound", err)
	}
	MustReserve(t, l, storage.Reservation{Repo: "r", Tags: []string{"v2"}, Digest: Digest("three")})
}
