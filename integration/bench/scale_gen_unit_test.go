package bench

import (
	"bytes"
	"context"
	"path/filepath"
	"slices"
	"testing"

	"github.com/taglock/taglock/storage"
	"github.com/taglock/taglock/storage/bolt"
)

// TestRepoSizes ensures the bindings are spread over every repository, a
// quarter of the mean at least, adding up to the total, with a few large
// repositories and the same sizes for the same seed.
func TestRepoSizes(t *testing.T) {
	t.Parallel()
	spec := scaleSpec{Repos: 1000, Bindings: 100_000, Seed: 3}
	sizes := repoSizes(spec)
	total, largest := 0, 0
	for _, n := range sizes {
		if n < spec.Bindings/spec.Repos/4 {
			t.Fatalf("a repository got %d bindings, below a quarter of the mean", n)
		}
		total += n
		largest = max(largest, n)
	}
	if total != spec.Bindings {
		t.Errorf("sizes add up to %d, want %d", total, spec.Bindings)
	}
	if mean := spec.Bindings / spec.Repos; largest < 20*mean {
		t.Errorf("the largest repository has %d bindings, want a heavy tail (at least %d)", largest, 20*mean)
	}
	if again := repoSizes(spec); !slices.Equal(again, sizes) {
		t.Error("the same spec gave other sizes")
	}
}

// TestScaleLedgerImportsAndExportsBack ensures a generated ledger is what
// `ledger export` writes: it imports into a bolt ledger, which then passes
// its integrity check, holds the counts the generator reports, and exports
// the very same bytes; and the same spec generates the same bytes again.
func TestScaleLedgerImportsAndExportsBack(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	spec := scaleSpec{Repos: 40, Bindings: 3000, Seed: 1}
	var gen bytes.Buffer
	stats, err := writeScaleLedger(&gen, spec, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var again bytes.Buffer
	if _, err := writeScaleLedger(&again, spec, t.TempDir()); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(gen.Bytes(), again.Bytes()) {
		t.Error("the same spec generated different ledgers")
	}
	if stats.Repos != 40 || stats.Bindings != 3000 || stats.Immutable+stats.Mutable+stats.Warn+stats.Delete != 3000 {
		t.Errorf("stats %+v, want 40 repositories and 3000 bindings", stats)
	}
	if stats.Mutable == 0 || stats.Warn == 0 || stats.Delete == 0 || stats.Manifests == 0 || stats.Pulls == 0 || stats.Events <= stats.Bindings {
		t.Errorf("stats %+v: want every mode, tombstones, manifests, pulls and more events than bindings", stats)
	}
	if len(stats.Sample) != 3000/sampleEvery {
		t.Errorf("%d sampled bindings, want %d", len(stats.Sample), 3000/sampleEvery)
	}

	l, err := bolt.Open(filepath.Join(t.TempDir(), "ledger.db"), bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	got, err := l.Import(ctx, bytes.NewReader(gen.Bytes()), storage.ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Bindings != stats.Bindings || got.Events != stats.Events || got.Manifests != stats.Manifests || got.Pulls != stats.Pulls {
		t.Errorf("imported %+v, generator reported %+v", got, stats)
	}
	if problems, err := l.Check(ctx); err != nil {
		t.Fatalf("check: %v %q", err, problems)
	}
	for _, ref := range stats.Sample {
		if _, err := l.Binding(ctx, ref[0], ref[1]); err != nil {
			t.Errorf("sampled binding: %v", err)
		}
	}
	bs, err := l.Bindings(ctx, stats.Biggest)
	if err != nil || len(bs) != stats.Tags {
		t.Errorf("biggest repository %s: %d bindings (%v), want %d", stats.Biggest, len(bs), err, stats.Tags)
	}
	var exported bytes.Buffer
	if err := l.Export(ctx, &exported); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(exported.Bytes(), gen.Bytes()) {
		t.Errorf("the ledger exports %d bytes unlike the %d generated", exported.Len(), gen.Len())
	}
}
