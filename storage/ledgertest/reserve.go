package ledgertest

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/storage"
)

func testReserveExpect(t *testing.T, open Opener) {
	// Reserve succeeds only when every binding is exactly what the caller
	// saw: digest, recorded mode and tombstone flag. The ledger applies no
	// rule of its own about tombstones: whether one binds its tag is the
	// caller's decision, and Reserve only makes it safe against change.
	one := NewBinding("r", "t", "one")
	tombstone := func(mode policy.Mode) storage.Binding {
		b := NewBinding("r", "t", "one")
		b.Mode, b.Deleted, b.DeletedAt = mode, true, At(1)
		return b
	}
	tests := []struct {
		name    string
		binding *storage.Binding
		expect  storage.Seen
		changed bool
	}{
		{name: "unbound, expect none", expect: storage.Seen{}},
		{name: "unbound, expect a binding", expect: one.Seen(), changed: true},
		{name: "bound, expect none", binding: ptr(one), changed: true},
		{name: "bound, expect it", binding: ptr(one), expect: one.Seen()},
		{name: "bound, expect another digest", binding: ptr(one), expect: storage.Seen{Digest: Digest("two"), Mode: policy.Immutable}, changed: true},
		{name: "bound, expect another mode", binding: ptr(one), expect: storage.Seen{Digest: one.Digest, Mode: policy.Warn}, changed: true},
		{name: "bound, expect its tombstone", binding: ptr(one), expect: tombstone(policy.Immutable).Seen(), changed: true},
		{name: "mutable tombstone, expect it", binding: ptr(tombstone(policy.Mutable)), expect: tombstone(policy.Mutable).Seen()},
		{name: "mutable tombstone, expect none", binding: ptr(tombstone(policy.Mutable)), changed: true},
		{name: "warn tombstone, expect it", binding: ptr(tombstone(policy.Warn)), expect: tombstone(policy.Warn).Seen()},
		{name: "warn tombstone, expect it live", binding: ptr(tombstone(policy.Warn)), expect: storage.Seen{Digest: one.Digest, Mode: policy.Warn}, changed: true},
		{name: "immutable tombstone, expect it", binding: ptr(tombstone(policy.Immutable)), expect: tombstone(policy.Immutable).Seen()},
		{name: "immutable tombstone, expect none", binding: ptr(tombstone(policy.Immutable)), changed: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			l := open(t)
			var actual storage.Seen
			if tc.binding != nil {
				MustPut(t, l, []storage.Binding{*tc.binding})
				actual = tc.binding.Seen()
			}
			r, err := l.Reserve(ctx, storage.Reservation{
				Repo: "r", Tags: []string{"ok", "t"}, Digest: Digest("two"),
				Expect: map[string]storage.Seen{"t": tc.expect},
			})
			pending, perr := l.Reservations(ctx)
			if perr != nil {
				t.Fatal(perr)
			}
			if !tc.changed {
				if err != nil {
					t.Fatalf("Reserve: %v", err)
				}
				if len(r.ID) != 32 || strings.Trim(r.ID, "0123456789abcdef") != "" || r.CreatedAt.IsZero() || r.Kind != storage.ReservePush {
					t.Errorf("Reserve returned ID %q CreatedAt %v Kind %q; want 32 hex digits, a time and push", r.ID, r.CreatedAt, r.Kind)
				}
				r.Expect = nil // not stored
				equal(t, "pending reservations", pending, []storage.Reservation{r})
				return
			}
			var ce *storage.ChangedError
			if !errors.Is(err, storage.ErrChanged) || !errors.As(err, &ce) {
				t.Fatalf("Reserve: err = %v, want ErrChanged as *ChangedError", err)
			}
			equal(t, "ChangedError", *ce, storage.ChangedError{Repo: "r", Tag: "t", Expected: tc.expect, Actual: actual})
			if !strings.Contains(err.Error(), "r:t") {
				t.Errorf("error %q does not name the tag", err)
			}
			equal(t, "pending reservations after a failed Reserve", len(pending), 0)
		})
	}
}

func ptr[T any](v T) *T { return &v }

func testReserveBusy(t *testing.T, open Opener) {
	// A pending push blocks other digests from its tags, not the same
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
	if be.Repo != "r" || be.Tag != "latest" || be.Digest != d1 || be.Holder.ID != first.ID || !be.Holder.CreatedAt.Equal(first.CreatedAt) {
		t.Errorf("BusyError = %+v, want r:latest held by %s (%s) since %v", *be, d1, first.ID, first.CreatedAt)
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

func testReserveDeletes(t *testing.T, open Opener) {
	// Deletes take part in the same protocol as pushes: a push and a delete
	// that touch one tag or one digest cannot both be pending, whichever
	// came first, so a delete can never land between a push's decision and
	// its binding.
	man, layer, child := Digest("man"), Digest("man/layer"), Digest("child")
	push := storage.Reservation{Repo: "r", Tags: []string{"v1"}, Digest: man, Closure: []digest.Digest{child, layer}}
	del := func(d digest.Digest, blob bool) storage.Reservation {
		return storage.Reservation{Kind: storage.ReserveDelete, Repo: "r", Digest: d, Blob: blob}
	}
	delTag := func(tag string) storage.Reservation {
		return storage.Reservation{Kind: storage.ReserveDelete, Repo: "r", Tags: []string{tag}, Digest: man}
	}
	tests := []struct {
		name        string
		first, then storage.Reservation
		busy        bool
	}{
		{"push, then delete of its manifest", push, del(man, false), true},
		{"push, then delete of a child manifest", push, del(child, false), true},
		{"push, then delete of a layer", push, del(layer, true), true},
		{"push, then delete of its tag", push, delTag("v1"), true},
		{"push, then delete of other content", push, del(Digest("other"), false), false},
		{"push, then delete of another tag", push, delTag("v2"), false},
		{"delete of a manifest, then a push of it", del(man, false), push, true},
		{"delete of a child, then a push of an index using it", del(child, false), push, true},
		{"delete of a layer, then a push of an image using it", del(layer, true), push, true},
		{"delete of a tag, then a push of it", delTag("v1"), push, true},
		{"delete of a tag, then a push of another tag with its digest", delTag("v2"), push, false},
		{"delete of a digest, then another delete of it", del(man, false), del(man, false), true},
		{"delete of a tag, then another delete of it", delTag("v1"), delTag("v1"), true},
		{"delete of a manifest, then a push in another repository", del(man, false), storage.Reservation{Repo: "s", Tags: []string{"v1"}, Digest: man}, false},
		{"two pushes sharing a layer", push, storage.Reservation{Repo: "r", Tags: []string{"v2"}, Digest: Digest("other"), Closure: []digest.Digest{layer}}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			l := open(t)
			first := MustReserve(t, l, tc.first)
			_, err := l.Reserve(ctx, tc.then)
			if !tc.busy {
				if err != nil {
					t.Fatalf("second Reserve: %v", err)
				}
				return
			}
			var be *storage.BusyError
			if !errors.Is(err, storage.ErrBusy) || !errors.As(err, &be) {
				t.Fatalf("second Reserve: err = %v, want ErrBusy as *BusyError", err)
			}
			if be.Holder.ID != first.ID || be.Repo != "r" {
				t.Errorf("BusyError = %+v, want held by %s", *be, first.ID)
			}
			if err := l.Release(ctx, first.ID); err != nil {
				t.Fatal(err)
			}
			MustReserve(t, l, tc.then)
		})
	}
}

func testReserveDeleteHoldsTagsItRemoves(t *testing.T, open Opener) {
	// A delete of a manifest by digest holds the tags bound to it: a
	// registry untags them one by one, so a push that moved one of them to
	// other content meanwhile could lose the tag. Whichever comes first,
	// the other waits.
	ctx := context.Background()
	l := open(t)
	old, other := NewBinding("r", "s1", "old"), NewBinding("r", "s2", "old")
	old.Mode, other.Mode = policy.Mutable, policy.Mutable
	MustPut(t, l, []storage.Binding{old, other})
	move := storage.Reservation{Repo: "r", Tags: []string{"s1"}, Digest: Digest("new"), Expect: map[string]storage.Seen{"s1": old.Seen()}}
	del := storage.Reservation{Kind: storage.ReserveDelete, Repo: "r", Digest: old.Digest}

	d := MustReserve(t, l, del)
	equal(t, "tags the delete holds", d.Removes, []string{"s1", "s2"})
	if _, err := l.Reserve(ctx, move); !errors.Is(err, storage.ErrBusy) {
		t.Errorf("move of a tag the delete removes: err = %v, want ErrBusy", err)
	}
	if err := l.Release(ctx, d.ID); err != nil {
		t.Fatal(err)
	}
	m := MustReserve(t, l, move)
	_, err := l.Reserve(ctx, del)
	var be *storage.BusyError
	if !errors.As(err, &be) || be.Holder.ID != m.ID || be.Tag != "s1" {
		t.Errorf("delete of the digest a pending move leaves: err = %v, want ErrBusy held by the move on s1", err)
	}
	if _, err := l.Reserve(ctx, storage.Reservation{Kind: storage.ReserveDelete, Repo: "r", Digest: Digest("x"), Removes: []string{"s9"}}); err != nil {
		t.Errorf("Reserve with Removes given: %v; Reserve sets Removes itself", err)
	}
}

func testReserveRecord(t *testing.T, open Opener) {
	// A reservation is stored as given: a caller may choose its ID, its
	// closure is normalized, and its deadline and owner come back.
	ctx := context.Background()
	l := open(t)
	id, err := storage.NewReservationID()
	if err != nil {
		t.Fatal(err)
	}
	in := storage.Reservation{ID: id, Repo: "r", Tags: []string{"v1"}, Digest: Digest("m"),
		Closure: []digest.Digest{Digest("a"), Digest("m"), Digest("a"), Digest("b")}, Deadline: At(5), Owner: "replica-1"}
	got := MustReserve(t, l, in)
	if got.ID != id || got.Kind != storage.ReservePush || got.CreatedAt.IsZero() {
		t.Errorf("Reserve returned %+v, want ID %s, kind push and a time", got, id)
	}
	equal(t, "closure", got.Closure, []digest.Digest{Digest("a"), Digest("b")})
	stored, err := l.Reservation(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	equal(t, "stored reservation", stored, got)
	if _, err := l.Reservation(ctx, strings.Repeat("0", 32)); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Reservation of an unknown ID: err = %v, want ErrNotFound", err)
	}
	if _, err := l.Reserve(ctx, storage.Reservation{ID: id, Repo: "r", Tags: []string{"v2"}, Digest: Digest("m")}); !errors.Is(err, storage.ErrInvalid) {
		t.Errorf("Reserve with a taken ID: err = %v, want ErrInvalid", err)
	}
	for _, bad := range []storage.Reservation{
		{ID: "nothex", Repo: "r", Tags: []string{"t"}, Digest: Digest("m")},
		{Kind: "frob", Repo: "r", Tags: []string{"t"}, Digest: Digest("m")},
		{Kind: storage.ReserveDelete, Repo: "r", Tags: []string{"a", "b"}, Digest: Digest("m")},
		{Kind: storage.ReserveDelete, Repo: "r", Tags: []string{"a"}, Digest: Digest("m"), Blob: true},
		{Kind: storage.ReserveDelete, Repo: "r", Digest: Digest("m"), Closure: []digest.Digest{Digest("x")}},
		{Kind: storage.ReserveDelete, Repo: "r", Tags: []string{"a"}, Digest: Digest("m"), Mode: ptr(policy.Mode(42))},
		{Repo: "r", Digest: Digest("m")},
		{Repo: "r", Tags: []string{"t"}, Digest: Digest("m"), Blob: true},
		{Repo: "r", Tags: []string{"t"}, Digest: Digest("m"), Removes: []string{"u"}},
		{Repo: "r", Tags: []string{"t"}, Digest: Digest("m"), Closure: []digest.Digest{"md5:00"}},
	} {
		if _, err := l.Reserve(ctx, bad); !errors.Is(err, storage.ErrInvalid) {
			t.Errorf("Reserve(%+v): err = %v, want ErrInvalid", bad, err)
		}
	}
	now := At(5)
	for _, tc := range []struct {
		r      storage.Reservation
		margin time.Duration
		want   bool
	}{
		{storage.Reservation{Deadline: At(6)}, 0, true},
		{storage.Reservation{Deadline: At(4)}, 0, false},
		{storage.Reservation{Deadline: At(4)}, 2 * time.Minute, true},
		{storage.Reservation{CreatedAt: At(4)}, 2 * time.Minute, true},
		{storage.Reservation{CreatedAt: At(1)}, 2 * time.Minute, false},
	} {
		if got := tc.r.InDoubt(now, tc.margin); got != tc.want {
			t.Errorf("%+v.InDoubt(At(5), %s) = %v, want %v", tc.r, tc.margin, got, tc.want)
		}
	}
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

	d := MustReserve(t, l, storage.Reservation{Kind: storage.ReserveDelete, Repo: "r", Digest: Digest("gone")})
	if err := l.Commit(ctx, d.ID, nil, nil); !errors.Is(err, storage.ErrInvalid) {
		t.Errorf("Commit of a delete: err = %v, want ErrInvalid", err)
	}
	if _, err := l.Reservation(ctx, d.ID); err != nil {
		t.Errorf("a refused Commit removed the delete reservation: %v", err)
	}
}

func testCommitDelete(t *testing.T, open Opener) {
	// CommitDelete records what the upstream delete removed, in the same
	// transaction that ends the reservation: the tag, or every live tag of
	// the manifest, and nothing for a blob. Other bindings stay as they are.
	ctx := context.Background()
	at := At(9)
	ev := storage.Event{Time: at, User: "ci", RequestID: "req-7", Reason: "deleted by digest"}
	setup := func(t *testing.T) storage.Ledger {
		l := open(t)
		a, b, c := NewBinding("r", "a", "m"), NewBinding("r", "b", "m"), NewBinding("r", "c", "other")
		a.Mode, b.Mode, c.Mode = policy.Mutable, policy.Warn, policy.Mutable
		c.Closure = []digest.Digest{Digest("m")} // references m, is not bound to it
		old := NewBinding("r", "old", "m")
		old.Deleted, old.DeletedAt = true, At(1)
		MustPut(t, l, []storage.Binding{a, b, c, old})
		return l
	}
	marked := func(bs []storage.Binding) []string {
		out := []string{}
		for _, b := range bs {
			out = append(out, b.Tag)
			if !b.Deleted || !b.DeletedAt.Equal(at) {
				t.Errorf("returned binding %s: Deleted %v at %v, want deleted at %v", b.Tag, b.Deleted, b.DeletedAt, at)
			}
		}
		return out
	}

	t.Run("manifest", func(t *testing.T) {
		l := setup(t)
		r := MustReserve(t, l, storage.Reservation{Kind: storage.ReserveDelete, Repo: "r", Digest: Digest("m")})
		got, err := l.CommitDelete(ctx, r.ID, ev)
		if err != nil {
			t.Fatal(err)
		}
		equal(t, "tags marked deleted", marked(got), []string{"a", "b"})
		for _, tag := range []string{"a", "b"} {
			if b := MustBinding(t, l, "r", tag); !b.Deleted || !b.DeletedAt.Equal(at) {
				t.Errorf("%s after CommitDelete: %+v, want a tombstone at %v", tag, b, at)
			}
		}
		if b := MustBinding(t, l, "r", "c"); b.Deleted {
			t.Errorf("a binding that only references the manifest was marked deleted")
		}
		if b := MustBinding(t, l, "r", "old"); !b.DeletedAt.Equal(At(1)) {
			t.Errorf("an earlier tombstone was rewritten: %+v", b)
		}
		hist, err := l.History(ctx, "r", "", 0)
		if err != nil {
			t.Fatal(err)
		}
		equal(t, "history", seqs(hist), []string{"deleted:b", "deleted:a"})
		if hist[0].RequestID != "req-7" || hist[0].Digest != Digest("m") || !hist[0].Time.Equal(at) {
			t.Errorf("event = %+v, want the template's request ID, the digest and the time", hist[0])
		}
		if _, err := l.CommitDelete(ctx, r.ID, ev); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("second CommitDelete: err = %v, want ErrNotFound", err)
		}
	})
	t.Run("tag", func(t *testing.T) {
		l := setup(t)
		r := MustReserve(t, l, storage.Reservation{Kind: storage.ReserveDelete, Repo: "r", Tags: []string{"b"}, Digest: Digest("m"),
			Mode: ptr(policy.Immutable), Expect: map[string]storage.Seen{"b": MustBinding(t, l, "r", "b").Seen()}})
		got, err := l.CommitDelete(ctx, r.ID, ev)
		if err != nil {
			t.Fatal(err)
		}
		equal(t, "tags marked deleted", marked(got), []string{"b"})
		if b := MustBinding(t, l, "r", "b"); b.Mode != policy.Immutable || !b.Deleted {
			t.Errorf("tombstone = %+v, want deleted with the reservation's mode", b)
		}
		if b := MustBinding(t, l, "r", "a"); b.Deleted {
			t.Errorf("another tag on the same digest was marked deleted")
		}
	})
	t.Run("blob", func(t *testing.T) {
		l := setup(t)
		r := MustReserve(t, l, storage.Reservation{Kind: storage.ReserveDelete, Repo: "r", Digest: Digest("m"), Blob: true})
		got, err := l.CommitDelete(ctx, r.ID, ev)
		if err != nil || len(got) != 0 {
			t.Fatalf("CommitDelete of a blob = %v, %v; want nothing marked", got, err)
		}
		if b := MustBinding(t, l, "r", "a"); b.Deleted {
			t.Errorf("a blob delete marked a tag deleted")
		}
		if pending, _ := l.Reservations(ctx); len(pending) != 0 {
			t.Errorf("CommitDelete left reservations %+v", pending)
		}
	})
	t.Run("push", func(t *testing.T) {
		l := setup(t)
		r := MustReserve(t, l, storage.Reservation{Repo: "r", Tags: []string{"v1"}, Digest: Digest("m")})
		if _, err := l.CommitDelete(ctx, r.ID, ev); !errors.Is(err, storage.ErrInvalid) {
			t.Errorf("CommitDelete of a push: err = %v, want ErrInvalid", err)
		}
		if _, err := l.Reservation(ctx, r.ID); err != nil {
			t.Errorf("a refused CommitDelete removed the push reservation: %v", err)
		}
	})
}
