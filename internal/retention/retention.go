package retention

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync/atomic"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/rs/zerolog"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/proxy"
	"github.com/taglock/taglock/storage"
)

// ErrTooManyDeletions is returned, wrapped, when a plan deletes more than
// retention.max_deletions allows; nothing is deleted.
var ErrTooManyDeletions = errors.New("the plan deletes more than max_deletions allows")

// ErrRunning is returned when an apply is asked while another runs.
var ErrRunning = errors.New("a retention run is already in progress")

// Ledger is what retention reads and records.
type Ledger interface {
	Repositories(ctx context.Context) ([]string, error)
	Bindings(ctx context.Context, repo string) ([]storage.Binding, error)
	Binding(ctx context.Context, repo, tag string) (storage.Binding, error)
	Referencing(ctx context.Context, repo string, d digest.Digest) ([]storage.Binding, error)
	Manifest(ctx context.Context, repo string, d digest.Digest) (storage.Manifest, error)
	Manifests(ctx context.Context, repo string) ([]storage.Manifest, error)
	PutManifest(ctx context.Context, m storage.Manifest) error
	LastPulls(ctx context.Context, repo string) (map[digest.Digest]time.Time, error)
	Put(ctx context.Context, bindings []storage.Binding, events []storage.Event) error
	JobStates(ctx context.Context, prefix string) (map[string][]byte, error)
	PutJobStates(ctx context.Context, values map[string][]byte) error
}

var _ Ledger = storage.Ledger(nil)

// Upstream is the registry retention lists and deletes from. Its deletes
// go through the same reservations as the registry API's, so retention
// never deletes what a push in flight is binding.
type Upstream interface {
	UpstreamRepositories(ctx context.Context) ([]string, error)
	UpstreamTags(ctx context.Context, repo string) ([]string, error)
	UpstreamManifest(ctx context.Context, repo, ref string) (body []byte, mediaType string, found bool, err error)
	Remove(ctx context.Context, rm proxy.Removal) (proxy.RemoveResult, error)
}

var _ Upstream = (*proxy.Drift)(nil)

// GCFunc reclaims storage after deletions and reports what it freed. bound
// reads every digest a live binding of the ledger holds (its manifest and
// its closure): whatever the registry's own links say, none of it may go.
// It walks the whole ledger, so a GCFunc calls it only once it knows it
// will collect, and before it stops writes.
type GCFunc func(ctx context.Context, bound BoundFunc) (GCResult, error)

// BoundFunc reads the content the ledger's live bindings hold.
type BoundFunc func(ctx context.Context) (map[digest.Digest]bool, error)

// Options configures New.
type Options struct {
	// Policy is the retention configuration.
	Policy policy.Retention
	// Immutability gives tags the ledger lacks their mode.
	Immutability policy.Immutability
	// Ledger and Upstream are required.
	Ledger   Ledger
	Upstream Upstream
	// Dir is where retention kept its state before it moved into the
	// ledger (apply.json, first-seen.json, gc-owed.json). Files found
	// there are moved into the ledger's job state once, and renamed with
	// a .migrated suffix. Default "": none to migrate.
	Dir string
	// Lock, when set, is taken for the whole of each Apply, so that one
	// run at a time applies retention across every process sharing the
	// ledger; it fails, wrapping ErrRunning, when another holds it.
	// Default nil: runs are one at a time within this process only.
	Lock func(ctx context.Context) (unlock func(), err error)
	// GC reclaims blob storage after a run that deleted something; nil
	// reclaims nothing (a remote upstream runs its own).
	GC GCFunc
	// Log receives run summaries. Default zerolog.Nop().
	Log zerolog.Logger
	// Audit receives one line per deletion. Default: Log.
	Audit *zerolog.Logger
	// Metrics records runs; nil records nothing.
	Metrics *Metrics
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// Runner plans and applies retention.
type Runner struct {
	pol     policy.Retention
	im      policy.Immutability
	ledger  Ledger
	up      Upstream
	dir     string
	gc      GCFunc
	log     zerolog.Logger
	audit   zerolog.Logger
	metrics *Metrics
	now     func() time.Time
	busy    chan struct{}
	lock    func(ctx context.Context) (func(), error)

	migrated atomic.Bool
}

// New returns a Runner.
func New(o Options) *Runner {
	r := &Runner{pol: o.Policy, im: o.Immutability, ledger: o.Ledger, up: o.Upstream, dir: o.Dir, gc: o.GC,
		log: o.Log, audit: o.Log, metrics: o.Metrics, now: o.Now, busy: make(chan struct{}, 1), lock: o.Lock}
	if o.Audit != nil {
		r.audit = *o.Audit
	}
	if r.now == nil {
		r.now = time.Now
	}
	return r
}

// Report is a plan for every governed repository.
type Report struct {
	// Time is when the plan was made.
	Time time.Time `json:"time"`
	// Plans has one plan per governed repository, sorted by repository.
	Plans []policy.RetentionPlan `json:"plans"`
	// Totals sums the plans.
	Totals policy.RetentionTotals `json:"totals"`
	// MaxDeletions is retention.max_deletions; zero means no limit.
	MaxDeletions int `json:"maxDeletions"`
	// OverLimit is set when the plan deletes more than MaxDeletions, so
	// apply would refuse it.
	OverLimit bool `json:"overLimit"`
}

// Plan decides what retention would delete now, and changes nothing in
// the registry. It caches manifests it had to fetch in the ledger and
// remembers when untagged manifests were first seen, so their grace period
// can start.
func (r *Runner) Plan(ctx context.Context) (Report, error) {
	now := r.now().UTC()
	rep := Report{Time: now, MaxDeletions: r.pol.MaxDeletions}
	repos, err := r.repositories(ctx)
	if err != nil {
		return rep, err
	}
	seen, err := r.loadSeen(ctx)
	if err != nil {
		return rep, err
	}
	old := maps.Clone(seen)
	var states []policy.RepoState
	for _, repo := range repos {
		st, err := r.repoState(ctx, repo, now, seen)
		if err != nil {
			return rep, err
		}
		states = append(states, st)
	}
	if err := r.saveSeen(ctx, old, seen); err != nil {
		return rep, err
	}
	rep.Plans, rep.Totals = r.pol.Plan(now, states)
	if rep.Plans == nil {
		rep.Plans = []policy.RetentionPlan{}
	}
	rep.OverLimit = rep.Totals.Exceeds(r.pol.MaxDeletions)
	return rep, nil
}

// repositories lists the governed repositories the ledger or the upstream
// knows.
func (r *Runner) repositories(ctx context.Context) ([]string, error) {
	up, err := r.up.UpstreamRepositories(ctx)
	if err != nil {
		return nil, fmt.Errorf("upstream catalog: %w", err)
	}
	known, err := r.ledger.Repositories(ctx)
	if err != nil {
		return nil, fmt.Errorf("ledger repositories: %w", err)
	}
	all := append(slices.Clone(up), known...)
	slices.Sort(all)
	all = slices.Compact(all)
	var out []string
	for _, repo := range all {
		if _, ok := r.pol.PolicyFor(repo); ok {
			out = append(out, repo)
		}
	}
	return out, nil
}

// Retention's job state in the ledger (storage.Ledger.JobStates).
const (
	// stateJournal holds the journal of a run: what it still has to
	// delete (JSON).
	stateJournal = "retention/journal"
	// stateSeen+"repo@digest" holds when an untagged manifest was first
	// seen (RFC 3339).
	stateSeen = "retention/first-seen/"
	// stateGCOwed is present while a garbage collection is owed.
	stateGCOwed = "retention/gc-owed"
)
