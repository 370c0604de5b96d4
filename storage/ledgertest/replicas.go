package ledgertest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	digest "github.com/opencontainers/go-digest"

	"github.com/taglock/taglock/storage"
)

// MaxManifest is the largest manifest taglock accepts, and so the largest
// a binding must hold: 4 MiB.
const MaxManifest = 4 << 20

// bigManifest returns n bytes of manifest-like content seeded by s.
func bigManifest(s string, n int) []byte {
	var b bytes.Buffer
	b.WriteString(`{"schemaVersion":2,"annotations":{"pad":"`)
	for i := 0; b.Len() < n-3; i++ {
		fmt.Fprintf(&b, "%s-%08d;", s, i)
	}
	b.Truncate(n - 3)
	b.WriteString(`"}}`)
	return b.Bytes()
}

func testLargeManifests(t *testing.T, open Opener) {
	// Bindings hold manifests up to the 4 MiB limit, byte for byte, through
	// Put, Commit, every read, a tombstone, a replacement by a small one
	// and an export imported elsewhere.
	ctx := context.Background()
	l := open(t)
	big := NewBinding("r", "big", "big")
	big.Manifest = bigManifest("a", MaxManifest)
	MustPut(t, l, []storage.Binding{big})
	equal(t, "4 MiB binding read back", len(MustBinding(t, l, "r", "big").Manifest), MaxManifest)
	if !bytes.Equal(MustBinding(t, l, "r", "big").Manifest, big.Manifest) {
		t.Fatal("the 4 MiB manifest read back differs")
	}

	// Two tags of one push, each with the largest manifest, in one Commit.
	pushed := bigManifest("b", MaxManifest)
	d := digest.FromBytes(pushed)
	res := MustReserve(t, l, storage.Reservation{Repo: "r", Tags: []string{"v1", "v1.0"}, Digest: d})
	var bs []storage.Binding
	for _, tag := range res.Tags {
		b := NewBinding("r", tag, "b")
		b.Digest, b.Manifest, b.Closure = d, pushed, []digest.Digest{Digest("b/layer")}
		bs = append(bs, b)
	}
	if err := l.Commit(ctx, res.ID, bs, []storage.Event{{Kind: storage.EventAccepted, Repo: "r", Tag: "v1", Digest: d}},
		storage.Manifest{Repo: "r", Digest: d, Size: int64(len(pushed))}); err != nil {
		t.Fatalf("Commit of two 4 MiB bindings: %v", err)
	}
	all, err := l.Bindings(ctx, "r")
	if err != nil {
		t.Fatal(err)
	}
	equal(t, "Bindings", tags(all), []string{"big", "v1", "v1.0"})
	for _, b := range all[1:] {
		if !bytes.Equal(b.Manifest, pushed) {
			t.Errorf("Bindings: %s's manifest differs", b.Tag)
		}
	}
	refs, err := l.Referencing(ctx, "r", Digest("b/layer"))
	if err != nil || len(refs) != 2 || !bytes.Equal(refs[0].Manifest, pushed) {
		t.Errorf("Referencing = %d bindings, %v; want v1 and v1.0 with their manifest", len(refs), err)
	}

	// A tombstone keeps the manifest; a smaller replacement drops it.
	del := MustReserve(t, l, storage.Reservation{Kind: storage.ReserveDelete, Repo: "r", Tags: []string{"big"}, Digest: big.Digest,
		Expect: map[string]storage.Seen{"big": big.Seen()}})
	marked, err := l.CommitDelete(ctx, del.ID, storage.Event{Time: At(3)})
	if err != nil || len(marked) != 1 || !bytes.Equal(marked[0].Manifest, big.Manifest) {
		t.Fatalf("CommitDelete = %d bindings, %v; want big with its manifest", len(marked), err)
	}
	small := MustBinding(t, l, "r", "v1.0")
	small.Manifest = []byte(`{"small":true}`)
	MustPut(t, l, []storage.Binding{small})
	equal(t, "replaced manifest", string(MustBinding(t, l, "r", "v1.0").Manifest), `{"small":true}`)
	if !bytes.Equal(MustBinding(t, l, "r", "big").Manifest, big.Manifest) {
		t.Error("the tombstone lost its manifest")
	}
	if problems, err := l.Check(ctx); err != nil {
		t.Errorf("Check: %v %q", err, problems)
	}

	dump := MustExport(t, l)
	dst := open(t)
	if _, err := dst.Import(ctx, bytes.NewReader(dump), storage.ImportOptions{}); err != nil {
		t.Fatalf("Import of 4 MiB manifests: %v", err)
	}
	if got := MustExport(t, dst); !bytes.Equal(got, dump) {
		t.Error("export after import differs")
	}
}

func testManyTags(t *testing.T, open Opener) {
	// A push may hold many tags at once (?tag= parameters), and holds each
	// of them against other pushes and deletes, both ways round; a tag
	// named twice is held once.
	ctx := context.Background()
	l := open(t)
	twice := MustReserve(t, l, storage.Reservation{Repo: "r", Tags: []string{"dup", "dup"}, Digest: Digest("dup")})
	if _, err := l.Reserve(ctx, storage.Reservation{Repo: "r", Tags: []string{"dup"}, Digest: Digest("other")}); !errors.Is(err, storage.ErrBusy) {
		t.Errorf("push of a tag reserved twice over: err = %v, want busy", err)
	}
	if err := l.Commit(ctx, twice.ID, []storage.Binding{NewBinding("r", "dup", "dup"), NewBinding("r", "dup", "dup")}, nil); err != nil {
		t.Fatalf("Commit of a tag named twice: %v", err)
	}
	if problems, err := l.Check(ctx); err != nil {
		t.Errorf("Check after a tag named twice: %v %q", err, problems)
	}
	var many []string
	for i := range 60 {
		many = append(many, fmt.Sprintf("t%02d", i))
	}
	d := Digest("many")
	r := MustReserve(t, l, storage.Reservation{Repo: "r", Tags: many, Digest: d})
	var be *storage.BusyError
	if _, err := l.Reserve(ctx, storage.Reservation{Repo: "r", Tags: []string{"t42"}, Digest: Digest("other")}); !errors.As(err, &be) || be.Holder.ID != r.ID {
		t.Errorf("push of one of its tags: err = %v, want busy, held by %s", err, r.ID)
	}
	if _, err := l.Reserve(ctx, storage.Reservation{Kind: storage.ReserveDelete, Repo: "r", Tags: []string{"t59"}}); !errors.Is(err, storage.ErrBusy) {
		t.Errorf("delete of one of its tags: err = %v, want busy", err)
	}
	var bs []storage.Binding
	for _, tag := range many {
		bs = append(bs, NewBinding("r", tag, "many"))
	}
	if err := l.Commit(ctx, r.ID, bs, nil); err != nil {
		t.Fatal(err)
	}
	one := MustReserve(t, l, storage.Reservation{Kind: storage.ReserveDelete, Repo: "r", Tags: []string{"t07"}, Digest: d,
		Expect: map[string]storage.Seen{"t07": MustBinding(t, l, "r", "t07").Seen()}})
	expect := map[string]storage.Seen{}
	for _, tag := range many {
		expect[tag] = MustBinding(t, l, "r", tag).Seen()
	}
	if _, err := l.Reserve(ctx, storage.Reservation{Repo: "r", Tags: many, Digest: d, Expect: expect}); !errors.As(err, &be) || be.Holder.ID != one.ID || be.Tag != "t07" {
		t.Errorf("push of many tags, one being deleted: err = %v, want busy on t07", err)
	}
	if err := l.Release(ctx, one.ID); err != nil {
		t.Fatal(err)
	}
	expect["t30"] = storage.Seen{}
	var ce *storage.ChangedError
	if _, err := l.Reserve(ctx, storage.Reservation{Repo: "r", Tags: many, Digest: d, Expect: expect}); !errors.As(err, &ce) || ce.Tag != "t30" {
		t.Errorf("push of many tags expecting one unbound: err = %v, want changed on t30", err)
	}
	delete(expect, "t30")
	expect["t30"] = MustBinding(t, l, "r", "t30").Seen()
	MustReserve(t, l, storage.Reservation{Repo: "r", Tags: many, Digest: d, Expect: expect})
}

func testCommitVanished(t *testing.T, open ReplicaOpener) {
	// A Commit or CommitDelete whose reservation another replica settled
	// meanwhile returns ErrNotFound and writes nothing, whether it lost the
	// reservation before it started or while it ran.
	ctx := context.Background()
	ls := open(t, 2)
	a, b := ls[0], ls[1]
	bind := NewBinding("r", "v1", "one")
	ev := storage.Event{Kind: storage.EventAccepted, Repo: "r", Tag: "v1", Digest: bind.Digest}
	man := storage.Manifest{Repo: "r", Digest: bind.Digest, Size: 3}

	r := MustReserve(t, a, storage.Reservation{Repo: "r", Tags: []string{"v1"}, Digest: bind.Digest})
	if err := b.Release(ctx, r.ID); err != nil {
		t.Fatal(err)
	}
	if err := a.Commit(ctx, r.ID, []storage.Binding{bind}, []storage.Event{ev}, man); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Commit of a released reservation: err = %v, want ErrNotFound", err)
	}
	del := MustReserve(t, a, storage.Reservation{Kind: storage.ReserveDelete, Repo: "r", Digest: Digest("gone")})
	if err := b.Release(ctx, del.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := a.CommitDelete(ctx, del.ID, storage.Event{}); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("CommitDelete of a released reservation: err = %v, want ErrNotFound", err)
	}
	nothingWritten := func(t *testing.T, what string) {
		t.Helper()
		if _, err := b.Binding(ctx, "r", "v1"); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("%s wrote its binding: err = %v", what, err)
		}
		if hist, err := b.History(ctx, "r", "", 0); err != nil || len(hist) != 0 {
			t.Errorf("%s wrote history %+v, %v", what, hist, err)
		}
		if _, err := b.Manifest(ctx, "r", bind.Digest); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("%s wrote its manifest: err = %v", what, err)
		}
	}
	nothingWritten(t, "a refused Commit")

	// Racing: one replica commits while the other releases. Either the
	// commit wins and everything is written, or the release does and
	// nothing is.
	for i := range 20 {
		repo := fmt.Sprintf("race%d", i)
		bind := NewBinding(repo, "v1", "one")
		r := MustReserve(t, a, storage.Reservation{Repo: repo, Tags: []string{"v1"}, Digest: bind.Digest})
		var commitErr, releaseErr error
		var wg sync.WaitGroup
		wg.Go(func() {
			commitErr = a.Commit(ctx, r.ID, []storage.Binding{bind}, []storage.Event{{Kind: storage.EventAccepted, Repo: repo, Tag: "v1"}})
		})
		wg.Go(func() { releaseErr = b.Release(ctx, r.ID) })
		wg.Wait()
		if releaseErr != nil {
			t.Fatalf("Release: %v", releaseErr)
		}
		_, bindErr := b.Binding(ctx, repo, "v1")
		hist, err := b.History(ctx, repo, "", 0)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case commitErr == nil && bindErr == nil && len(hist) == 1:
		case errors.Is(commitErr, storage.ErrNotFound) && errors.Is(bindErr, storage.ErrNotFound) && len(hist) == 0:
		default:
			t.Fatalf("round %d: Commit = %v, binding %v, %d events: a commit that lost its reservation wrote, or one that won did not", i, commitErr, bindErr, len(hist))
		}
		if pending, err := b.Reservations(ctx); err != nil || len(pending) != 0 {
			t.Fatalf("round %d: reservations left %+v, %v", i, pending, err)
		}
	}
}

func testReplicasRaceForATag(t *testing.T, open ReplicaOpener) {
	// Replicas racing to push different digests to one new tag never both
	// win: exactly one digest is reserved, committed and bound, and every
	// other push is refused as busy or changed. Pushes of the winner's
	// digest on any replica share its reservation.
	ctx := context.Background()
	ls := open(t, 3)
	const pushers = 24
	for round := range 3 {
		repo := fmt.Sprintf("race%d", round)
		var (
			mu  sync.Mutex
			won []int
			wg  sync.WaitGroup
		)
		start := make(chan struct{})
		for i := range pushers {
			l := ls[i%len(ls)]
			wg.Go(func() {
				<-start
				d := Digest(fmt.Sprint("content-", i))
				r, err := l.Reserve(ctx, storage.Reservation{Repo: repo, Tags: []string{"v1"}, Digest: d,
					Expect: map[string]storage.Seen{"v1": {}}})
				if errors.Is(err, storage.ErrBusy) || errors.Is(err, storage.ErrChanged) {
					return
				}
				if err != nil {
					t.Errorf("Reserve: %v", err)
					return
				}
				mu.Lock()
				won = append(won, i)
				mu.Unlock()
				b := NewBinding(repo, "v1", fmt.Sprint("content-", i))
				if err := l.Commit(ctx, r.ID, []storage.Binding{b}, []storage.Event{{Kind: storage.EventAccepted, Repo: repo, Tag: "v1", Digest: d}}); err != nil {
					t.Errorf("Commit: %v", err)
				}
			})
		}
		close(start)
		wg.Wait()
		if len(won) != 1 {
			t.Fatalf("round %d: %d pushes of different digests won the tag (%v), want exactly 1", round, len(won), won)
		}
		for _, l := range ls {
			if b := MustBinding(t, l, repo, "v1"); b.Digest != Digest(fmt.Sprint("content-", won[0])) {
				t.Errorf("round %d: bound to %s, want the winner's digest", round, b.Digest)
			}
		}
	}

	// Same digest from every replica at once: all share the tag.
	d := Digest("same")
	var wg sync.WaitGroup
	errs := make([]error, 3*len(ls))
	for i := range errs {
		wg.Go(func() {
			_, errs[i] = ls[i%len(ls)].Reserve(ctx, storage.Reservation{Repo: "same", Tags: []string{"v1"}, Digest: d})
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Errorf("Reserve of the same digest: %v, want shared", err)
		}
	}
}

func testReplicasRacePushAndDelete(t *testing.T, open ReplicaOpener) {
	// A push and a delete of something in its closure, its manifest or its
	// tag, started at once on two replicas, never both hold: one is
	// refused as busy, whichever replica is faster.
	ctx := context.Background()
	ls := open(t, 2)
	layer, child, man := Digest("layer"), Digest("child"), Digest("man")
	deletes := []struct {
		name string
		r    storage.Reservation
	}{
		{"a layer", storage.Reservation{Kind: storage.ReserveDelete, Digest: layer, Blob: true}},
		{"a child manifest", storage.Reservation{Kind: storage.ReserveDelete, Digest: child}},
		{"the manifest", storage.Reservation{Kind: storage.ReserveDelete, Digest: man}},
		{"the tag", storage.Reservation{Kind: storage.ReserveDelete, Tags: []string{"v1"}, Digest: man}},
	}
	for _, del := range deletes {
		for round := range 15 {
			repo := fmt.Sprintf("r%d", round)
			push := storage.Reservation{Repo: repo, Tags: []string{"v1"}, Digest: man, Closure: []digest.Digest{child, layer}}
			dr := del.r
			dr.Repo = repo
			pl, dl := ls[round%2], ls[(round+1)%2]
			var pushed, deleted storage.Reservation
			var pushErr, delErr error
			var wg sync.WaitGroup
			start := make(chan struct{})
			wg.Go(func() { <-start; pushed, pushErr = pl.Reserve(ctx, push) })
			wg.Go(func() { <-start; deleted, delErr = dl.Reserve(ctx, dr) })
			close(start)
			wg.Wait()
			switch {
			case pushErr == nil && delErr == nil:
				t.Fatalf("delete of %s, round %d: a push and a delete of %s both hold", del.name, round, del.name)
			case pushErr != nil && !errors.Is(pushErr, storage.ErrBusy), delErr != nil && !errors.Is(delErr, storage.ErrBusy):
				t.Fatalf("delete of %s, round %d: push %v, delete %v; want one busy", del.name, round, pushErr, delErr)
			}
			for _, id := range []string{pushed.ID, deleted.ID} {
				if id != "" {
					if err := pl.Release(ctx, id); err != nil {
						t.Fatal(err)
					}
				}
			}
		}
	}
}

func testReplicasShareHistory(t *testing.T, open ReplicaOpener) {
	// Sequence numbers are global across replicas: events appended one
	// after another on different replicas are numbered in that order, and
	// events appended at once on all of them get distinct numbers that
	// Recent and History list newest first.
	ctx := context.Background()
	ls := open(t, 3)
	var want []string
	for i := range 9 {
		l := ls[i%len(ls)]
		tag := fmt.Sprintf("t%d", i)
		switch i % 3 {
		case 0:
			if err := l.Append(ctx, storage.Event{Kind: storage.EventRefused, Repo: "r", Tag: tag}); err != nil {
				t.Fatal(err)
			}
		case 1:
			MustPut(t, l, []storage.Binding{NewBinding("r", tag, tag)}, storage.Event{Kind: storage.EventAdopted, Repo: "r", Tag: tag})
		case 2:
			b := NewBinding("r", tag, tag)
			r := MustReserve(t, l, storage.Reservation{Repo: "r", Tags: []string{tag}, Digest: b.Digest})
			if err := l.Commit(ctx, r.ID, []storage.Binding{b}, []storage.Event{{Kind: storage.EventAccepted, Repo: "r", Tag: tag}}); err != nil {
				t.Fatal(err)
			}
		}
		want = append([]string{fmt.Sprintf("%d:%s", i+1, tag)}, want...)
	}
	for _, l := range ls {
		hist, err := l.History(ctx, "r", "", 0)
		if err != nil {
			t.Fatal(err)
		}
		got := []string{}
		for _, e := range hist {
			got = append(got, fmt.Sprintf("%d:%s", e.Seq, e.Tag))
		}
		equal(t, "history across replicas", got, want)
	}

	const each = 15
	var wg sync.WaitGroup
	for i, l := range ls {
		for j := range each {
			wg.Go(func() {
				if err := l.Append(ctx, storage.Event{Kind: storage.EventRefused, Repo: "burst", Tag: fmt.Sprintf("r%d-%d", i, j)}); err != nil {
					t.Errorf("Append: %v", err)
				}
			})
		}
	}
	wg.Wait()
	all, err := ls[1].Recent(ctx, storage.EventRefused, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != len(ls)*each+3 {
		t.Fatalf("Recent(refused) has %d events, want %d", len(all), len(ls)*each+3)
	}
	for i := 1; i < len(all); i++ {
		if all[i].Seq >= all[i-1].Seq {
			t.Fatalf("Recent lists seq %d after %d: not strictly newest first", all[i].Seq, all[i-1].Seq)
		}
	}
	if newest, err := ls[2].Recent(ctx, "", 1); err != nil || newest[0].Seq != uint64(9+len(ls)*each) {
		t.Errorf("newest event = %+v, %v; want seq %d: numbers are dense", newest, err, 9+len(ls)*each)
	}
}
