package ledgertest

import (
	"context"
	"errors"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/taglock/taglock/storage"
)

func testHistory(t *testing.T, open Opener) {
	// History lists a tag's or a repository's events newest first, honours
	// limit, and sequences are global and strictly increasing.
	ctx := context.Background()
	l := open(t)
	steps := []storage.Event{
		{Kind: storage.EventAccepted, Repo: "r", Tag: "v1", Time: At(1)},
		{Kind: storage.EventAccepted, Repo: "other", Tag: "v1", Time: At(2)},
		{Kind: storage.EventRefused, Repo: "r", Tag: "v1", Reason: "immutable-tag-moved"},
		{Kind: storage.EventAccepted, Repo: "r", Tag: "v2", Time: At(4)},
		{Kind: storage.EventDeleted, Repo: "r", Digest: Digest("blob")},
		{Kind: storage.EventIdentical, Repo: "r", Tag: "v1", Time: At(6)},
		{Kind: storage.EventRefused, Repo: "r", Tag: "v10", Time: At(7)},
	}
	if err := l.Append(ctx, steps[:3]...); err != nil {
		t.Fatal(err)
	}
	MustPut(t, l, []storage.Binding{NewBinding("r", "v2", "two")}, steps[3])
	for _, e := range steps[4:] {
		if err := l.Append(ctx, e); err != nil {
			t.Fatal(err)
		}
	}

	tests := []struct {
		tag   string
		limit int
		want  []string
	}{
		{"v1", 0, []string{"identical:v1", "refused:v1", "accepted:v1"}},
		{"v1", 2, []string{"identical:v1", "refused:v1"}},
		{"v1", -1, []string{"identical:v1", "refused:v1", "accepted:v1"}},
		{"v2", 0, []string{"accepted:v2"}},
		{"v3", 0, []string{}},
		{"", 0, []string{"refused:v10", "identical:v1", "deleted:", "accepted:v2", "refused:v1", "accepted:v1"}},
		{"", 3, []string{"refused:v10", "identical:v1", "deleted:"}},
	}
	for _, tc := range tests {
		got, err := l.History(ctx, "r", tc.tag, tc.limit)
		if err != nil {
			t.Fatal(err)
		}
		equal(t, "History(r, "+tc.tag+")", seqs(got), tc.want)
	}

	all, err := l.Recent(ctx, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != len(steps) {
		t.Fatalf("Recent returned %d events, want %d", len(all), len(steps))
	}
	for i, e := range all {
		if want := uint64(len(steps) - i); e.Seq != want {
			t.Errorf("event %d has Seq %d, want %d", i, e.Seq, want)
		}
		if e.Time.IsZero() {
			t.Errorf("event %d has no time", e.Seq)
		}
	}
	if !all[len(all)-1].Time.Equal(At(1)) {
		t.Errorf("a given time was not kept: %v", all[len(all)-1].Time)
	}
	last := all[0].Seq
	if err := l.Append(ctx, storage.Event{Seq: last, Kind: storage.EventAccepted, Repo: "r"}); !errors.Is(err, storage.ErrInvalid) {
		t.Errorf("Append reusing seq %d: err = %v, want ErrInvalid", last, err)
	}
	if err := l.Append(ctx, storage.Event{Seq: last + 10, Kind: storage.EventAccepted, Repo: "r"}); err != nil {
		t.Errorf("Append with a new explicit seq: %v", err)
	}
	if err := l.Append(ctx, storage.Event{Kind: storage.EventAccepted, Repo: "r"}); err != nil {
		t.Fatal(err)
	}
	if newest, err := l.Recent(ctx, "", 1); err != nil || len(newest) != 1 || newest[0].Seq != last+11 {
		t.Errorf("after an explicit seq %d the next is %+v, %v; want %d", last+10, newest, err, last+11)
	}
}

func testRecent(t *testing.T, open Opener) {
	// Recent returns the newest events of one kind, or of any kind, across
	// repositories.
	ctx := context.Background()
	l := open(t)
	kinds := []storage.EventKind{
		storage.EventRefused, storage.EventAccepted, storage.EventRefused, storage.EventMoved,
		storage.EventRefused, storage.EventWarned, storage.EventAccepted,
	}
	for i, k := range kinds {
		repo := []string{"a", "b"}[i%2]
		if err := l.Append(ctx, storage.Event{Kind: k, Repo: repo, Tag: "t", Time: At(i)}); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		kind  storage.EventKind
		limit int
		want  []uint64
	}{
		{storage.EventRefused, 0, []uint64{5, 3, 1}},
		{storage.EventRefused, 2, []uint64{5, 3}},
		{storage.EventAccepted, 0, []uint64{7, 2}},
		{storage.EventRestored, 0, []uint64{}},
		{"", 3, []uint64{7, 6, 5}},
	}
	for _, tc := range tests {
		got, err := l.Recent(ctx, tc.kind, tc.limit)
		if err != nil {
			t.Fatal(err)
		}
		gotSeqs := []uint64{}
		for _, e := range got {
			gotSeqs = append(gotSeqs, e.Seq)
			if tc.kind != "" && e.Kind != tc.kind {
				t.Errorf("Recent(%s) returned a %s event", tc.kind, e.Kind)
			}
		}
		equal(t, "Recent("+string(tc.kind)+") seqs", gotSeqs, tc.want)
	}
}

func testManifests(t *testing.T, open Opener) {
	// Manifest records round-trip, are listed per repository by digest and
	// are replaced by a later PutManifest.
	ctx := context.Background()
	l := open(t)
	idx := storage.Manifest{
		Repo: "r", Digest: Digest("index"), MediaType: "application/vnd.oci.image.index.v1+json", Size: 300,
		Children: []digest.Digest{Digest("amd64"), Digest("arm64")},
	}
	sig := storage.Manifest{
		Repo: "r", Digest: Digest("sig"), Size: 200, Blobs: []digest.Digest{Digest("cfg"), Digest("payload")},
		Subject: Digest("index"), ArtifactType: "application/vnd.dev.cosign.artifact.sig.v1+json",
	}
	elsewhere := storage.Manifest{Repo: "r2", Digest: Digest("index"), Size: 1}
	for _, m := range []storage.Manifest{idx, sig, elsewhere} {
		if err := l.PutManifest(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	got, err := l.Manifest(ctx, "r", Digest("sig"))
	if err != nil {
		t.Fatal(err)
	}
	equal(t, "Manifest(sig)", got, sig)
	if _, err := l.Manifest(ctx, "r", Digest("nothing")); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Manifest of an unknown digest: err = %v, want ErrNotFound", err)
	}
	list, err := l.Manifests(ctx, "r")
	if err != nil {
		t.Fatal(err)
	}
	want := []storage.Manifest{idx, sig}
	if idx.Digest > sig.Digest {
		want = []storage.Manifest{sig, idx}
	}
	equal(t, "Manifests(r)", list, want)

	idx.Children = idx.Children[:1]
	if err := l.PutManifest(ctx, idx); err != nil {
		t.Fatal(err)
	}
	if got, err := l.Manifest(ctx, "r", idx.Digest); err != nil || len(got.Children) != 1 {
		t.Errorf("replaced manifest = %+v, %v; want one child", got, err)
	}
}

func testPulls(t *testing.T, open Opener) {
	// Pulls keep the latest time per repository and digest, whatever order
	// batches and pulls within them arrive in.
	ctx := context.Background()
	l := open(t)
	a, b := Digest("a"), Digest("b")
	batches := [][]storage.Pull{
		{{Repo: "r", Digest: a, At: At(5)}, {Repo: "r", Digest: a, At: At(9)}, {Repo: "r", Digest: a, At: At(7)}},
		{{Repo: "r", Digest: b, At: At(3)}, {Repo: "other", Digest: a, At: At(1)}},
		{{Repo: "r", Digest: a, At: At(8)}, {Repo: "r", Digest: b, At: At(4).In(time.FixedZone("X", 3600))}},
		{},
	}
	for _, batch := range batches {
		if err := l.RecordPulls(ctx, batch); err != nil {
			t.Fatal(err)
		}
	}
	got, err := l.LastPulls(ctx, "r")
	if err != nil {
		t.Fatal(err)
	}
	equal(t, "LastPulls(r)", got, map[digest.Digest]time.Time{a: At(9), b: At(4)})
	none, err := l.LastPulls(ctx, "never")
	if err != nil || len(none) != 0 {
		t.Errorf("LastPulls of an unpulled repository = %v, %v; want empty", none, err)
	}
}
