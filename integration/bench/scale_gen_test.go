package bench

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/storage"
)

// scaleSpec describes a generated ledger: how many repositories and
// bindings, and the seed that makes it reproducible.
type scaleSpec struct {
	Repos    int
	Bindings int
	Seed     uint64
}

// scaleT0 is when the generated history starts; event n happens n seconds
// later.
var scaleT0 = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// scaleStats is what writeScaleLedger wrote.
type scaleStats struct {
	Repos, Bindings                  int
	Immutable, Mutable, Warn, Delete int // live bindings by mode; tombstones apart
	Manifests, Events, Pulls         int
	// Biggest is the repository with the most bindings, and Tags its count.
	Biggest string
	Tags    int
	// Sample is every sampleEvery-th binding's repository and tag, for
	// lookups.
	Sample [][2]string
}

// Records is how many export lines were written.
func (s scaleStats) Records() int { return s.Bindings + s.Manifests + s.Events + s.Pulls }

// sampleEvery is how often a binding lands in scaleStats.Sample.
const sampleEvery = 97

// repoSizes spreads spec.Bindings over spec.Repos: every repository gets a
// quarter of the mean, and the rest goes by a Zipf-like law (weight
// 1/rank^0.9, ranks shuffled), so a few repositories hold tens of thousands
// of tags and most hold a few dozen, as in a registry shared by many teams
// with a few monorepos pushing a tag per commit. The sizes add up to
// spec.Bindings exactly.
func repoSizes(spec scaleSpec) []int {
	n := spec.Repos
	sizes := make([]int, n)
	if n == 0 {
		return sizes
	}
	base := spec.Bindings / n / 4
	rest := spec.Bindings - base*n
	rng := rand.New(rand.NewPCG(spec.Seed, 1))
	rank := rng.Perm(n)
	weights := make([]float64, n)
	var total float64
	for i := range n {
		weights[i] = 1 / math.Pow(float64(rank[i]+1), 0.9)
		total += weights[i]
	}
	given := 0
	for i := range n {
		sizes[i] = base + int(float64(rest)*weights[i]/total)
		given += sizes[i]
	}
	for i := 0; given < spec.Bindings; i = (i + 1) % n {
		sizes[i]++
		given++
	}
	return sizes
}

// repoNames returns n repository names, sorted bytewise.
func repoNames(n int) []string {
	names := make([]string, n)
	for i := range n {
		names[i] = fmt.Sprintf("team-%02d/service-%05d", i%64, i)
	}
	slices.Sort(names)
	return names
}

// scaleGen writes the records of one generated ledger.
type scaleGen struct {
	spec  scaleSpec
	seq   uint64
	stats scaleStats
	// Each section goes to its own writer, in export order: bindings
	// first, then manifests, pulls and events.
	bindings, manifests, pulls, events *storage.ExportWriter
}

// writeScaleLedger writes a generated ledger as `taglock ledger export`
// would: JSON lines of bindings (by repository, then tag), manifests and
// pulls (by repository, then digest) and events (by sequence). The mix:
// about 80% of the tags immutable, 15% mutable and 5% warn, 2% of them
// tombstones; every binding has a closure of a config and two to five
// layers, four of them shared by the repository's images; immutable
// bindings keep their manifest bytes; a third of the digests have a
// manifest record and one in twenty a pull; each tag has one to four history
// events (accepted or adopted, moves of mutable tags, identical re-pushes,
// refusals, deletes). Manifests, pulls and events are staged in temporary
// files under dir, removed before it returns. Equal specs give equal bytes.
func writeScaleLedger(w io.Writer, spec scaleSpec, dir string) (scaleStats, error) {
	g := &scaleGen{spec: spec}
	files := make([]*os.File, 3)
	for i := range files {
		f, err := os.CreateTemp(dir, "scale-section-*")
		if err != nil {
			return scaleStats{}, err
		}
		defer os.Remove(f.Name())
		defer f.Close()
		files[i] = f
	}
	out := bufio.NewWriterSize(w, 1<<20)
	g.bindings = storage.NewExportWriter(out)
	g.manifests = storage.NewExportWriter(files[0])
	g.pulls = storage.NewExportWriter(files[1])
	g.events = storage.NewExportWriter(files[2])
	names := repoNames(spec.Repos)
	sizes := repoSizes(spec)
	for i, repo := range names {
		if err := g.repo(i, repo, sizes[i]); err != nil {
			return scaleStats{}, err
		}
	}
	if err := g.bindings.Flush(); err != nil {
		return scaleStats{}, err
	}
	for i, x := range []*storage.ExportWriter{g.manifests, g.pulls, g.events} {
		if err := x.Flush(); err != nil {
			return scaleStats{}, err
		}
		if _, err := files[i].Seek(0, io.SeekStart); err != nil {
			return scaleStats{}, err
		}
		if _, err := io.Copy(out, files[i]); err != nil {
			return scaleStats{}, err
		}
	}
	g.stats.Repos = spec.Repos
	return g.stats, out.Flush()
}

// scaleTag is one tag of a generated repository before it is written.
type scaleTag struct {
	name string
	mode policy.Mode
}

// repo writes repository number i, named repo, with n bindings.
func (g *scaleGen) repo(i int, repo string, n int) error {
	rng := rand.New(rand.NewPCG(g.spec.Seed, uint64(i)+2))
	tags := make([]scaleTag, n)
	for j := range n {
		switch r := rng.Float64(); {
		case j == 0:
			tags[j] = scaleTag{"latest", policy.Mutable}
		case r < 0.80:
			tags[j] = scaleTag{fmt.Sprintf("%d.%d.%d", j/10000, j/100%100, j%100), policy.Immutable}
		case r < 0.95:
			tags[j] = scaleTag{fmt.Sprintf("dev-%d", j), policy.Mutable}
		default:
			tags[j] = scaleTag{fmt.Sprintf("nightly-%d", j), policy.Warn}
		}
	}
	slices.SortFunc(tags, func(a, b scaleTag) int { return strings.Compare(a.name, b.name) })
	shared := make([]digest.Digest, 4)
	for k := range shared {
		shared[k] = digest.FromString(fmt.Sprintf("%s/base-layer/%d", repo, k))
	}
	var manifests []storage.Manifest
	var pulls []storage.Pull
	for j, t := range tags {
		b, err := g.binding(rng, repo, t, shared)
		if err != nil {
			return err
		}
		if err := g.bindings.Binding(b); err != nil {
			return err
		}
		g.stats.Bindings++
		switch {
		case b.Deleted:
			g.stats.Delete++
		case b.Mode == policy.Immutable:
			g.stats.Immutable++
		case b.Mode == policy.Mutable:
			g.stats.Mutable++
		default:
			g.stats.Warn++
		}
		if g.stats.Bindings%sampleEvery == 0 {
			g.stats.Sample = append(g.stats.Sample, [2]string{repo, t.name})
		}
		if rng.IntN(3) == 0 {
			manifests = append(manifests, storage.Manifest{Repo: repo, Digest: b.Digest, MediaType: b.MediaType,
				Size: b.Size, Blobs: b.Closure})
		}
		if rng.IntN(20) == 0 {
			pulls = append(pulls, storage.Pull{Repo: repo, Digest: b.Digest, At: scaleT0.Add(time.Duration(g.seq+uint64(j)) * time.Second)})
		}
	}
	if n > g.stats.Tags {
		g.stats.Biggest, g.stats.Tags = repo, n
	}
	slices.SortFunc(manifests, func(a, b storage.Manifest) int { return strings.Compare(string(a.Digest), string(b.Digest)) })
	manifests = slices.CompactFunc(manifests, func(a, b storage.Manifest) bool { return a.Digest == b.Digest })
	for _, m := range manifests {
		if err := g.manifests.Manifest(m); err != nil {
			return err
		}
	}
	g.stats.Manifests += len(manifests)
	slices.SortFunc(pulls, func(a, b storage.Pull) int { return strings.Compare(string(a.Digest), string(b.Digest)) })
	pulls = slices.CompactFunc(pulls, func(a, b storage.Pull) bool { return a.Digest == b.Digest })
	for _, p := range pulls {
		if err := g.pulls.Pull(p); err != nil {
			return err
		}
	}
	g.stats.Pulls += len(pulls)
	return nil
}

// binding makes the binding of repo:t and writes its history.
func (g *scaleGen) binding(rng *rand.Rand, repo string, t scaleTag, shared []digest.Digest) (storage.Binding, error) {
	user := fmt.Sprintf("ci-%d", rng.IntN(20))
	image := func(v int) (digest.Digest, []digest.Digest, []byte) {
		cfg := digest.FromString(fmt.Sprintf("%s:%s/config/%d", repo, t.name, v))
		closure := []digest.Digest{cfg}
		closure = append(closure, shared[:1+rng.IntN(len(shared))]...)
		closure = append(closure, digest.FromString(fmt.Sprintf("%s:%s/layer/%d", repo, t.name, v)))
		var m strings.Builder
		fmt.Fprintf(&m, `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":1469},"layers":[`, cfg)
		for k, l := range closure[1:] {
			if k > 0 {
				m.WriteByte(',')
			}
			fmt.Fprintf(&m, `{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":%q,"size":%d}`, l, 1000+rng.IntN(1<<24))
		}
		m.WriteString("]}")
		raw := []byte(m.String())
		return digest.FromBytes(raw), closure, raw
	}
	d, closure, raw := image(0)
	first := storage.EventAccepted
	if rng.IntN(10) == 0 {
		first = storage.EventAdopted
	}
	at := g.event(storage.Event{Kind: first, Repo: repo, Tag: t.name, Digest: d, User: user, Rule: "rule." + t.mode.String()})
	b := storage.Binding{Repo: repo, Tag: t.name, Digest: d, MediaType: "application/vnd.oci.image.manifest.v1+json",
		Size: int64(len(raw)), Mode: t.mode, Rule: "rule." + t.mode.String(), PushedAt: at, PushedBy: user, Closure: closure}
	if t.mode == policy.Immutable {
		b.Manifest = raw
		switch rng.IntN(100) {
		case 0:
			other, _, _ := image(1)
			g.event(storage.Event{Kind: storage.EventRefused, Repo: repo, Tag: t.name, Digest: other, Previous: d, User: user,
				Rule: b.Rule, Reason: "immutable-tag-moved", Message: "tag is immutable"})
		case 1, 2, 3, 4, 5, 6, 7, 8, 9, 10:
			g.event(storage.Event{Kind: storage.EventIdentical, Repo: repo, Tag: t.name, Digest: d, User: user, Rule: b.Rule})
		}
	} else {
		kind := storage.EventMoved
		if t.mode == policy.Warn {
			kind = storage.EventWarned
		}
		for v := 1; v <= rng.IntN(4); v++ {
			nd, nc, nraw := image(v)
			b.PushedAt = g.event(storage.Event{Kind: kind, Repo: repo, Tag: t.name, Digest: nd, Previous: b.Digest, User: user, Rule: b.Rule})
			b.Digest, b.Closure, b.Size = nd, nc, int64(len(nraw))
		}
	}
	if rng.IntN(50) == 0 {
		b.Deleted = true
		b.DeletedAt = g.event(storage.Event{Kind: storage.EventDeleted, Repo: repo, Tag: t.name, Digest: b.Digest, User: user})
	}
	return b, nil
}

// event writes e as the next event and returns its time.
func (g *scaleGen) event(e storage.Event) time.Time {
	g.seq++
	e.Seq = g.seq
	e.Time = scaleT0.Add(time.Duration(g.seq) * time.Second)
	g.stats.Events++
	// A write error surfaces at Flush, which writeScaleLedger checks.
	_ = g.events.Event(e)
	return e.Time
}
