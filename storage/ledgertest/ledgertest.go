// Package ledgertest is the conformance suite every ledger backend runs, in
// the manner of Distribution's storage driver test suites: one set of
// expectations about bindings, tombstones, the closure index, reservations,
// history, manifests, pulls, export and import, backup and integrity
// checks, counts and pages, and the races several ledgers sharing one store
// must survive.
//
// Every backend runs it unmodified. What only one backend can be asked
// (restoring its backup format, damaging its storage for Check, file locks)
// belongs in that backend's own tests. It holds test code only and must not
// be imported outside tests.
package ledgertest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/storage"
)

// Opener returns a fresh, empty ledger for one test. It must close the
// ledger in t.Cleanup, tolerating a ledger the test already closed.
type Opener func(t *testing.T) storage.Ledger

// ReplicaOpener returns n ledgers sharing one fresh, empty store, as n
// replicas of taglock would. It must close them in t.Cleanup.
type ReplicaOpener func(t *testing.T, n int) []storage.Ledger

// Option changes how RunConformance runs.
type Option func(*options)

type options struct {
	replicas ReplicaOpener
}

// Replicas makes the replica cases use ledgers from open. Without it they
// use one ledger from the Opener n times, which is all a backend that one
// process holds (a locked file) can offer; the cases then check that the
// ledger is safe for concurrent use.
func Replicas(open ReplicaOpener) Option {
	return func(o *options) { o.replicas = open }
}

// RunConformance runs the whole suite, each part as a parallel subtest with
// ledgers made by open.
func RunConformance(t *testing.T, open Opener, opts ...Option) {
	o := options{replicas: func(t *testing.T, n int) []storage.Ledger {
		l := open(t)
		out := make([]storage.Ledger, n)
		for i := range out {
			out[i] = l
		}
		return out
	}}
	for _, opt := range opts {
		opt(&o)
	}
	replicas := func(run func(*testing.T, ReplicaOpener)) func(*testing.T, Opener) {
		return func(t *testing.T, _ Opener) { run(t, o.replicas) }
	}
	tests := []struct {
		name string
		run  func(*testing.T, Opener)
	}{
		{"BindingsRoundTrip", testBindingsRoundTrip},
		{"InvalidRecords", testInvalidRecords},
		{"Tombstones", testTombstones},
		{"Referencing", testReferencing},
		{"ReserveExpect", testReserveExpect},
		{"ReserveBusy", testReserveBusy},
		{"ReserveDeletes", testReserveDeletes},
		{"ReserveDeleteHoldsTagsItRemoves", testReserveDeleteHoldsTagsItRemoves},
		{"ReserveRecord", testReserveRecord},
		{"CommitAndRelease", testCommitAndRelease},
		{"CommitDelete", testCommitDelete},
		{"History", testHistory},
		{"Recent", testRecent},
		{"Manifests", testManifests},
		{"Pulls", testPulls},
		{"ExportImport", testExportImport},
		{"ImportRejects", testImportRejects},
		{"ImportContradictions", testImportContradictions},
		{"ImportManifestsAndDeadlines", testImportManifestsAndDeadlines},
		{"Backup", testBackup},
		{"Check", testCheck},
		{"CanceledContext", testCanceledContext},
		{"LargeManifests", testLargeManifests},
		{"ManyTags", testManyTags},
		{"Counts", testCounts},
		{"CountsConcurrent", testCountsConcurrent},
		{"Pages", testPages},
		{"JobStates", testJobStates},
		{"WatchBindings", replicas(testWatchBindings)},
		{"CommitOfAVanishedReservation", replicas(testCommitVanished)},
		{"ReplicasRaceForATag", replicas(testReplicasRaceForATag)},
		{"ReplicasRacePushAndDelete", replicas(testReplicasRacePushAndDelete)},
		{"ReplicasShareHistory", replicas(testReplicasShareHistory)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.run(t, open)
		})
	}
}

// Digest returns a valid sha256 digest derived from s, for fixtures.
func Digest(s string) digest.Digest { return digest.FromString(s) }

// T0 is the fixtures' reference time.
var T0 = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)

// At returns T0 plus n minutes.
func At(n int) time.Time { return T0.Add(time.Duration(n) * time.Minute) }

// NewBinding returns an immutable binding of repo:tag to Digest(content).
func NewBinding(repo, tag, content string) storage.Binding {
	return storage.Binding{
		Repo:      repo,
		Tag:       tag,
		Digest:    Digest(content),
		MediaType: "application/vnd.oci.image.manifest.v1+json",
		Size:      int64(len(content)),
		Mode:      policy.Immutable,
		Rule:      "releases",
		PushedAt:  T0,
		PushedBy:  "ci",
		Closure:   []digest.Digest{Digest(content + "/config"), Digest(content + "/layer")},
		Manifest:  []byte(content),
	}
}

// MustPut stores bindings and events or fails the test.
func MustPut(t testing.TB, l storage.Ledger, bindings []storage.Binding, events ...storage.Event) {
	t.Helper()
	if err := l.Put(context.Background(), bindings, events); err != nil {
		t.Fatalf("Put: %v", err)
	}
}

// MustReserve reserves or fails the test.
func MustReserve(t testing.TB, l storage.Ledger, r storage.Reservation) storage.Reservation {
	t.Helper()
	got, err := l.Reserve(context.Background(), r)
	if err != nil {
		t.Fatalf("Reserve(%s %v %s): %v", r.Repo, r.Tags, r.Digest, err)
	}
	return got
}

// MustBinding reads a binding or fails the test.
func MustBinding(t testing.TB, l storage.Ledger, repo, tag string) storage.Binding {
	t.Helper()
	b, err := l.Binding(context.Background(), repo, tag)
	if err != nil {
		t.Fatalf("Binding(%s, %s): %v", repo, tag, err)
	}
	return b
}

// equal fails the test with a readable diff line when got != want.
func equal[T any](t *testing.T, what string, got, want T) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s:\n got  %+v\n want %+v", what, got, want)
	}
}

// tags lists the tags of bindings, in order.
func tags(bs []storage.Binding) []string {
	out := []string{}
	for _, b := range bs {
		out = append(out, b.Tag)
	}
	return out
}

// seqs lists "kind:tag" of events, in order.
func seqs(es []storage.Event) []string {
	out := []string{}
	for _, e := range es {
		out = append(out, fmt.Sprintf("%s:%s", e.Kind, e.Tag))
	}
	return out
}

func testBindingsRoundTrip(t *testing.T, open Opener) {
	// Bindings are read back exactly as stored, per tag, per repository and
	// across repositories, and a later Put replaces the whole record.
	ctx := context.Background()
	l := open(t)
	v2, v1, latest := NewBinding("team/a", "v2", "a2"), NewBinding("team/a", "v1", "a1"), NewBinding("team/b", "latest", "b1")
	latest.Mode, latest.Rule, latest.Manifest, latest.Closure = policy.Mutable, "", nil, nil
	MustPut(t, l, []storage.Binding{v2, v1, latest})

	equal(t, "Binding(team/a, v2)", MustBinding(t, l, "team/a", "v2"), v2)
	equal(t, "Binding(team/b, latest)", MustBinding(t, l, "team/b", "latest"), latest)
	got, err := l.Bindings(ctx, "team/a")
	if err != nil {
		t.Fatal(err)
	}
	equal(t, "Bindings(team/a)", got, []storage.Binding{v1, v2})
	repos, err := l.Repositories(ctx)
	if err != nil {
		t.Fatal(err)
	}
	equal(t, "Repositories", repos, []string{"team/a", "team/b"})
	if got, err := l.Bindings(ctx, "team"); err != nil || len(got) != 0 {
		t.Errorf("Bindings(team) = %v, %v; want none: a repository is not a prefix match", got, err)
	}
	if _, err := l.Binding(ctx, "team/a", "v3"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Binding of an unknown tag: err = %v, want ErrNotFound", err)
	}

	moved := NewBinding("team/b", "latest", "b2")
	moved.Mode = policy.Mutable
	moved.Closure = []digest.Digest{Digest("x"), moved.Digest, Digest("x")}
	MustPut(t, l, []storage.Binding{moved})
	want := moved
	want.Closure = []digest.Digest{Digest("x")} // own digest and duplicates dropped
	equal(t, "replaced binding", MustBinding(t, l, "team/b", "latest"), want)
}

func testInvalidRecords(t *testing.T, open Opener) {
	// Records that cannot be keyed or make no sense are refused with
	// ErrInvalid and nothing is written.
	ctx := context.Background()
	l := open(t)
	good := NewBinding("r", "t", "c")
	tests := []struct {
		name string
		edit func(*storage.Binding)
	}{
		{"empty repo", func(b *storage.Binding) { b.Repo = "" }},
		{"empty tag", func(b *storage.Binding) { b.Tag = "" }},
		{"NUL in tag", func(b *storage.Binding) { b.Tag = "a\x00b" }},
		{"NUL in repo", func(b *storage.Binding) { b.Repo = "a\x00b" }},
		{"bad digest", func(b *storage.Binding) { b.Digest = "sha256:nothex" }},
		{"bad closure digest", func(b *storage.Binding) { b.Closure = []digest.Digest{"md5:00"} }},
		{"unknown mode", func(b *storage.Binding) { b.Mode = policy.Mode(42) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := good
			tc.edit(&b)
			if err := l.Put(ctx, []storage.Binding{good, b}, nil); !errors.Is(err, storage.ErrInvalid) {
				t.Errorf("Put: err = %v, want ErrInvalid", err)
			}
		})
	}
	if _, err := l.Binding(ctx, "r", "t"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("a refused Put wrote its valid bindings too: err = %v", err)
	}
	for _, e := range []storage.Event{{Repo: "r"}, {Kind: "x\x00y", Repo: "r"}, {Kind: storage.EventRefused, Repo: "r", Tag: "a\x00"}} {
		if err := l.Append(ctx, e); !errors.Is(err, storage.ErrInvalid) {
			t.Errorf("Append(%+v): err = %v, want ErrInvalid", e, err)
		}
	}
	for _, r := range []storage.Reservation{
		{Repo: "r", Digest: Digest("c")},
		{Repo: "r", Tags: []string{""}, Digest: Digest("c")},
		{Repo: "r", Tags: []string{"t"}, Digest: "latest"},
		{Tags: []string{"t"}, Digest: Digest("c")},
	} {
		if _, err := l.Reserve(ctx, r); !errors.Is(err, storage.ErrInvalid) {
			t.Errorf("Reserve(%+v): err = %v, want ErrInvalid", r, err)
		}
	}
	if err := l.PutManifest(ctx, storage.Manifest{Repo: "r", Digest: "sha256:short"}); !errors.Is(err, storage.ErrInvalid) {
		t.Errorf("PutManifest with a bad digest: err = %v, want ErrInvalid", err)
	}
	if err := l.RecordPulls(ctx, []storage.Pull{{Repo: "r", Digest: Digest("c")}}); !errors.Is(err, storage.ErrInvalid) {
		t.Errorf("RecordPulls with a zero time: err = %v, want ErrInvalid", err)
	}
}

func testTombstones(t *testing.T, open Opener) {
	// A deleted tag keeps its binding as a tombstone, visible to every read.
	ctx := context.Background()
	l := open(t)
	b := NewBinding("r", "v1", "one")
	MustPut(t, l, []storage.Binding{b})
	b.Deleted, b.DeletedAt = true, At(5)
	MustPut(t, l, []storage.Binding{b}, storage.Event{Kind: storage.EventDeleted, Repo: "r", Tag: "v1", Digest: b.Digest})

	equal(t, "tombstone", MustBinding(t, l, "r", "v1"), b)
	all, err := l.Bindings(ctx, "r")
	if err != nil {
		t.Fatal(err)
	}
	equal(t, "Bindings with a tombstone", tags(all), []string{"v1"})
	refs, err := l.Referencing(ctx, "r", Digest("one/layer"))
	if err != nil {
		t.Fatal(err)
	}
	equal(t, "Referencing a tombstone's layer", tags(refs), []string{"v1"})
	repos, err := l.Repositories(ctx)
	if err != nil {
		t.Fatal(err)
	}
	equal(t, "Repositories with only a tombstone", repos, []string{"r"})
}

func testReferencing(t *testing.T, open Opener) {
	// Referencing finds bindings by their digest or any closure digest, per
	// repository, and follows bindings as they are replaced.
	ctx := context.Background()
	l := open(t)
	index := NewBinding("r", "multi", "index")
	index.Closure = []digest.Digest{Digest("amd64"), Digest("arm64"), Digest("shared-layer")}
	single := NewBinding("r", "amd", "amd64")
	single.Closure = []digest.Digest{Digest("shared-layer")}
	other := NewBinding("elsewhere", "multi", "index")
	MustPut(t, l, []storage.Binding{index, single, other})

	tests := []struct {
		d    digest.Digest
		want []string
	}{
		{Digest("index"), []string{"multi"}},
		{Digest("amd64"), []string{"amd", "multi"}},
		{Digest("arm64"), []string{"multi"}},
		{Digest("shared-layer"), []string{"amd", "multi"}},
		{Digest("unrelated"), []string{}},
	}
	for _, tc := range tests {
		got, err := l.Referencing(ctx, "r", tc.d)
		if err != nil {
			t.Fatal(err)
		}
		equal(t, "Referencing "+string(tc.d), tags(got), tc.want)
	}

	moved := NewBinding("r", "multi", "index2")
	moved.Mode = policy.Mutable
	moved.Closure = []digest.Digest{Digest("amd64")}
	MustPut(t, l, []storage.Binding{moved})
	for _, tc := range []struct {
		d    digest.Digest
		want []string
	}{
		{Digest("index"), []string{}},
		{Digest("arm64"), []string{}},
		{Digest("index2"), []string{"multi"}},
		{Digest("amd64"), []string{"amd", "multi"}},
	} {
		got, err := l.Referencing(ctx, "r", tc.d)
		if err != nil {
			t.Fatal(err)
		}
		equal(t, "after the move, Referencing "+string(tc.d), tags(got), tc.want)
	}
	if problems, err := l.Check(ctx); err != nil {
		t.Errorf("Check after replacing a binding: %v %q", err, problems)
	}
}

func testCanceledContext(t *testing.T, open Opener) {
	// Every method refuses to start with a canceled or expired context,
	// and writes nothing.
	l := open(t)
	r := MustReserve(t, l, storage.Reservation{Repo: "r", Tags: []string{"held"}, Digest: Digest("held")})
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	expired, cancel2 := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel2()
	for _, c := range []struct {
		ctx  context.Context
		want error
	}{{canceled, context.Canceled}, {expired, context.DeadlineExceeded}} {
		ctx := c.ctx
		calls := map[string]func() error{
			"Binding":      func() error { _, err := l.Binding(ctx, "r", "t"); return err },
			"Bindings":     func() error { _, err := l.Bindings(ctx, "r"); return err },
			"Repositories": func() error { _, err := l.Repositories(ctx); return err },
			"Referencing":  func() error { _, err := l.Referencing(ctx, "r", Digest("c")); return err },
			"Put":          func() error { return l.Put(ctx, []storage.Binding{NewBinding("r", "t", "c")}, nil) },
			"Reserve": func() error {
				_, err := l.Reserve(ctx, storage.Reservation{Repo: "r", Tags: []string{"t"}, Digest: Digest("c")})
				return err
			},
			"Commit":       func() error { return l.Commit(ctx, r.ID, []storage.Binding{NewBinding("r", "held", "held")}, nil) },
			"CommitDelete": func() error { _, err := l.CommitDelete(ctx, r.ID, storage.Event{}); return err },
			"Release":      func() error { return l.Release(ctx, r.ID) },
			"Reservation":  func() error { _, err := l.Reservation(ctx, r.ID); return err },
			"Reservations": func() error { _, err := l.Reservations(ctx); return err },
			"Append":       func() error { return l.Append(ctx, storage.Event{Kind: storage.EventRefused, Repo: "r"}) },
			"History":      func() error { _, err := l.History(ctx, "r", "", 0); return err },
			"Recent":       func() error { _, err := l.Recent(ctx, "", 0); return err },
			"PutManifest":  func() error { return l.PutManifest(ctx, storage.Manifest{Repo: "r", Digest: Digest("m")}) },
			"Manifest":     func() error { _, err := l.Manifest(ctx, "r", Digest("m")); return err },
			"Manifests":    func() error { _, err := l.Manifests(ctx, "r"); return err },
			"RecordPulls": func() error {
				return l.RecordPulls(ctx, []storage.Pull{{Repo: "r", Digest: Digest("m"), At: T0}})
			},
			"LastPulls": func() error { _, err := l.LastPulls(ctx, "r"); return err },
			"Export":    func() error { return l.Export(ctx, io.Discard) },
			"Import": func() error {
				_, err := l.Import(ctx, strings.NewReader(`{"type":"manifest","repo":"r","digest":"`+string(Digest("m"))+`"}`), storage.ImportOptions{})
				return err
			},
			"Backup": func() error { _, err := l.Backup(ctx, io.Discard); return err },
			"Check":  func() error { _, err := l.Check(ctx); return err },
		}
		for name, call := range calls {
			if err := call(); !errors.Is(err, c.want) {
				t.Errorf("%s: err = %v, want %v", name, err, c.want)
			}
		}
	}
	ctx := context.Background()
	if _, err := l.Binding(ctx, "r", "t"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("a canceled Put wrote: err = %v", err)
	}
	if _, err := l.Reservation(ctx, r.ID); err != nil {
		t.Errorf("a canceled call settled the reservation: %v", err)
	}
	if hist, err := l.Recent(ctx, "", 0); err != nil || len(hist) != 0 {
		t.Errorf("canceled calls wrote history %+v, %v", hist, err)
	}
	if _, err := l.Manifest(ctx, "r", Digest("m")); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("a canceled PutManifest or Import wrote: err = %v", err)
	}
}
