package retention

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/proxy"
	"github.com/taglock/taglock/storage"
)

// Deletion is one delete of a run: a tag (Tag set) or a digest.
type Deletion struct {
	Repo   string        `json:"repo"`
	Tag    string        `json:"tag,omitempty"`
	Digest digest.Digest `json:"digest"`
	// Released marks an immutable tag released by release_after.
	Released bool `json:"released,omitempty"`
	// Policy names the governing policy; Reason says why it is deleted.
	Policy string `json:"policy,omitempty"`
	Reason string `json:"reason,omitempty"`
	// Outcome is set once the deletion ran: deleted, gone (the upstream
	// no longer had it), skipped (a push landed on it after the plan) or
	// failed.
	Outcome string `json:"outcome,omitempty"`
	// Error says why it failed or was skipped.
	Error string `json:"error,omitempty"`
}

// Outcomes of a Deletion.
const (
	OutcomeDeleted = "deleted"
	OutcomeGone    = "gone"
	OutcomeSkipped = "skipped"
	OutcomeFailed  = "failed"
)

// Progress is the state of a running apply.
type Progress struct {
	Done  int      `json:"done"`
	Total int      `json:"total"`
	Last  Deletion `json:"last"`
}

// ApplyOptions configures Apply.
type ApplyOptions struct {
	// Progress, when not nil, is called after each deletion.
	Progress func(Progress) `json:"-"`
}

// Result is what Apply did.
type Result struct {
	// Report is the plan applied; empty when the run only finished an
	// interrupted one or was refused.
	Report Report `json:"report"`
	// Resumed counts deletions finished from an interrupted run.
	Resumed int `json:"resumed"`
	// Deletions are every deletion attempted, in order, with outcomes.
	Deletions []Deletion `json:"deletions"`
	// Deleted, Skipped and Failed count Deletions by outcome (gone counts
	// as deleted).
	Deleted int `json:"deleted"`
	Skipped int `json:"skipped"`
	Failed  int `json:"failed"`
	// GC is what garbage collection freed, or why it was deferred; nil
	// when none was due.
	GC *GCResult `json:"gc,omitempty"`
}

// journal is the state file of a run: the deletions it still has to do,
// and the policy that planned them.
type journal struct {
	Started time.Time `json:"started"`
	// Policy fingerprints the retention and immutability configuration
	// the run applied; a run is resumed only under the same one.
	Policy  string     `json:"policy,omitempty"`
	Pending []Deletion `json:"pending"`
}

// fingerprint names the configuration a run applies: the retention
// policies and max_deletions, and the immutability rules (not the
// schedule).
func (r *Runner) fingerprint() string {
	pol := r.pol
	pol.Schedule = 0
	b, err := json.Marshal(struct {
		Retention    policy.Retention
		Immutability policy.Immutability
	}{pol, r.im})
	if err != nil {
		return "unknown: " + err.Error() // never equal to a journal's
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// Apply finishes an interrupted run, if any, then plans and applies the
// plan: tags first, then digests in delete order. A plan over
// max_deletions is refused with ErrTooManyDeletions before anything is
// deleted. Failed deletions are reported in the result and tried again by
// the next run; the error is for what stops the run (the ledger, the
// context, the plan).
func (r *Runner) Apply(ctx context.Context, o ApplyOptions) (res Result, err error) {
	select {
	case r.busy <- struct{}{}:
		defer func() { <-r.busy }()
	default:
		return res, ErrRunning
	}
	if r.lock != nil {
		unlock, err := r.lock(ctx)
		if err != nil {
			return res, err
		}
		defer unlock()
	}
	start := r.now()
	defer func() { r.metrics.observe(start, res, err) }()
	res.Deletions = []Deletion{}

	if j, err := r.loadJournal(ctx); err != nil {
		return res, err
	} else if j != nil && len(j.Pending) > 0 {
		switch fp := r.fingerprint(); {
		case j.Policy != fp:
			// The configuration changed since the interrupted run (an
			// operator may have reverted a mistake): its deletions are
			// not this policy's. The fresh plan below decides.
			r.log.Warn().Int("pending", len(j.Pending)).Time("started", j.Started).
				Msg("retention: the configuration changed since the interrupted run; its remaining deletions are dropped and a fresh plan decides")
			r.audit.Warn().Str("event", "retention-resume-dropped").Int("pending", len(j.Pending)).Time("started", j.Started).
				Msg("retention: an interrupted run's remaining deletions were dropped: the configuration changed")
			if err := r.removeJournal(ctx); err != nil {
				return res, err
			}
		case r.pol.MaxDeletions > 0 && len(j.Pending) > r.pol.MaxDeletions:
			return res, fmt.Errorf("%w: the interrupted run has %d deletions left, max_deletions is %d; review them (taglock retention plan) and raise retention.max_deletions",
				ErrTooManyDeletions, len(j.Pending), r.pol.MaxDeletions)
		default:
			r.log.Info().Int("pending", len(j.Pending)).Time("started", j.Started).Msg("retention: resuming an interrupted run")
			n := len(res.Deletions)
			if err := r.run(ctx, j, &res, o); err != nil {
				return res, err
			}
			res.Resumed = len(res.Deletions) - n
		}
	}

	res.Report, err = r.Plan(ctx)
	if err != nil {
		return res, err
	}
	if res.Report.OverLimit {
		r.log.Warn().Int("deletions", res.Report.Totals.Deletions()).Int("max_deletions", r.pol.MaxDeletions).
			Msg("retention: plan refused: it deletes more than max_deletions")
		return res, fmt.Errorf("%w: %d deletions planned, max_deletions is %d; review the plan (taglock retention plan) and raise retention.max_deletions or narrow the policies",
			ErrTooManyDeletions, res.Report.Totals.Deletions(), r.pol.MaxDeletions)
	}
	j := &journal{Started: res.Report.Time, Policy: r.fingerprint()}
	for _, p := range res.Report.Plans {
		for _, t := range p.Tags {
			if !t.Kept {
				j.Pending = append(j.Pending, Deletion{Repo: p.Repository, Tag: t.Tag, Digest: t.Digest, Released: t.Released,
					Policy: p.Policy, Reason: t.Reason})
			}
		}
	}
	for _, p := range res.Report.Plans {
		reasons := map[digest.Digest]string{}
		for _, m := range p.Manifests {
			reasons[m.Digest] = m.Reason
		}
		for _, d := range p.DeleteOrder {
			j.Pending = append(j.Pending, Deletion{Repo: p.Repository, Digest: d, Policy: p.Policy, Reason: reasons[d]})
		}
	}
	if err := r.run(ctx, j, &res, o); err != nil {
		return res, err
	}
	owed := false
	if r.gc != nil && res.Deleted == 0 {
		if owed, err = r.gcOwed(ctx); err != nil {
			return res, err
		}
	}
	if r.gc != nil && (res.Deleted > 0 || owed) {
		gc, err := r.collect(ctx)
		if err != nil {
			return res, fmt.Errorf("garbage collection: %w", err)
		}
		res.GC = &gc
	}
	r.log.Info().Int("deleted", res.Deleted).Int("skipped", res.Skipped).Int("failed", res.Failed).Int("resumed", res.Resumed).
		Msg("retention: run finished")
	return res, nil
}

// run does the pending deletions of j in order, keeping the journal in
// the ledger up to date so that an interruption loses nothing, whichever
// replica runs retention next.
func (r *Runner) run(ctx context.Context, j *journal, res *Result, o ApplyOptions) error {
	total := len(j.Pending)
	if total == 0 {
		return nil
	}
	if err := r.saveJournal(ctx, j); err != nil {
		return err
	}
	for i := 0; len(j.Pending) > 0; i++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		d := j.Pending[0]
		if err := r.deleteOne(ctx, &d); err != nil {
			return err // the journal still holds d: the next run does it
		}
		j.Pending = j.Pending[1:]
		if err := r.saveJournal(ctx, j); err != nil {
			return err
		}
		res.Deletions = append(res.Deletions, d)
		switch d.Outcome {
		case OutcomeDeleted, OutcomeGone:
			res.Deleted++
		case OutcomeSkipped:
			res.Skipped++
		default:
			res.Failed++
		}
		if o.Progress != nil {
			o.Progress(Progress{Done: i + 1, Total: total, Last: d})
		}
	}
	return r.removeJournal(ctx)
}

// deleteOne runs one deletion and sets its outcome. The error is for what
// must stop the run: the ledger or the context.
func (r *Runner) deleteOne(ctx context.Context, d *Deletion) error {
	if d.Tag != "" {
		return r.deleteTag(ctx, d)
	}
	return r.deleteDigest(ctx, d)
}

// deleteTag deletes one tag the plan deletes or releases, if its binding
// is still the one planned. The delete reserves the tag, so a push of it
// waits, and its tombstone is written in the transaction that ends the
// reservation, from the binding as it is then. A released tag's tombstone
// records the mode that governed the release, so it keeps the tag bound.
func (r *Runner) deleteTag(ctx context.Context, d *Deletion) error {
	b, err := r.ledger.Binding(ctx, d.Repo, d.Tag)
	switch {
	case errors.Is(err, storage.ErrNotFound):
		d.Outcome, d.Error = OutcomeSkipped, "the ledger has no binding for it"
		return nil
	case err != nil:
		return fmt.Errorf("binding %s:%s: %w", d.Repo, d.Tag, err)
	case b.Deleted && b.Digest == d.Digest:
		d.Outcome = OutcomeGone
		return nil
	case b.Deleted || b.Digest != d.Digest:
		d.Outcome, d.Error = OutcomeSkipped, fmt.Sprintf("the tag now points to %s, pushed after the plan", b.Digest)
		r.auditDeletion(d)
		return nil
	}
	configured, _ := r.im.ModeFor(d.Repo, d.Tag)
	mode := policy.Effective(configured, b.Mode)
	if !d.Released && !policy.DecideDelete(mode).Allowed() {
		// Planned as a mutable tag's delete, but the tag has been recorded
		// immutable since (an identical re-push while the configuration
		// made it immutable): it is immutable for good, and only
		// release_after, which this deletion is not, lets retention take it.
		d.Outcome, d.Error = OutcomeSkipped, "the tag is immutable now (recorded "+b.Mode.String()+" after the plan)"
		r.auditDeletion(d)
		return nil
	}
	reason := "retention"
	if d.Released {
		reason = "retention-released"
	}
	res, err := r.up.Remove(ctx, proxy.Removal{Repo: d.Repo, Tag: d.Tag, Digest: d.Digest, Expect: b.Seen(), Mode: &mode,
		Event: storage.Event{Kind: storage.EventDeleted, User: "taglock retention", Rule: d.Policy, Reason: reason, Message: "retention: " + d.Reason}})
	return r.outcome(ctx, d, res, err)
}

// deleteDigest deletes one manifest the plan deletes, unless a tag now
// references it. The delete reserves the manifest and the check runs under
// that reservation, so a push that would bind a tag to it, or to an index
// that uses it, either finished before (and the check sees its tag) or
// waits until the delete is done.
func (r *Runner) deleteDigest(ctx context.Context, d *Deletion) error {
	res, err := r.up.Remove(ctx, proxy.Removal{Repo: d.Repo, Digest: d.Digest,
		Check: func(bs []storage.Binding) error {
			for _, b := range bs {
				if !b.Deleted {
					return &skip{fmt.Sprintf("tag %s (%s) now points to it", b.Tag, b.Digest)}
				}
			}
			return nil
		},
		Event: storage.Event{Kind: storage.EventDeleted, User: "taglock retention", Rule: d.Policy, Reason: "retention", Message: "retention: " + d.Reason}})
	return r.outcome(ctx, d, res, err)
}

// skip is a deletion the state at deletion time rules out.
type skip struct{ why string }

func (s *skip) Error() string { return s.why }

// outcome sets d's outcome from a Remove and writes its audit line. The
// error is for what must stop the run: the ledger or the context.
func (r *Runner) outcome(ctx context.Context, d *Deletion, res proxy.RemoveResult, err error) error {
	var sk *skip
	switch {
	case err == nil && res.Found:
		d.Outcome = OutcomeDeleted
	case err == nil:
		d.Outcome = OutcomeGone
	case errors.As(err, &sk):
		d.Outcome, d.Error = OutcomeSkipped, sk.why
	case errors.Is(err, storage.ErrChanged):
		d.Outcome, d.Error = OutcomeSkipped, "a push changed the tag after the plan"
	case errors.Is(err, storage.ErrBusy):
		d.Outcome, d.Error = OutcomeSkipped, "a push or delete of it is in flight: "+err.Error()
	case ctx.Err() != nil:
		return ctx.Err()
	case errors.Is(err, proxy.ErrLedger):
		return err
	default:
		d.Outcome, d.Error = OutcomeFailed, err.Error()
	}
	r.auditDeletion(d)
	return nil
}

// auditDeletion writes the audit line of one deletion.
func (r *Runner) auditDeletion(d *Deletion) {
	ev := r.audit.Info()
	if d.Outcome == OutcomeFailed || d.Outcome == OutcomeSkipped {
		ev = r.audit.Warn()
	}
	what := "manifest"
	if d.Tag != "" {
		what = "tag"
	}
	ev.Str("event", "retention-"+d.Outcome).Str("repo", d.Repo).Str("tag", d.Tag).Str("digest", d.Digest.String()).
		Bool("released", d.Released).Str("rule", d.Policy).Str("reason", d.Reason).Str("error", d.Error).
		Msg("retention " + what + " " + d.Outcome)
}

func (r *Runner) loadJournal(ctx context.Context) (*journal, error) {
	if err := r.migrate(ctx); err != nil {
		return nil, err
	}
	st, err := r.ledger.JobStates(ctx, stateJournal)
	if err != nil {
		return nil, fmt.Errorf("retention state: %w", err)
	}
	b, ok := st[stateJournal]
	if !ok {
		return nil, nil
	}
	var j journal
	if err := json.Unmarshal(b, &j); err != nil {
		return nil, fmt.Errorf("retention state %s: %w", stateJournal, err)
	}
	return &j, nil
}

func (r *Runner) saveJournal(ctx context.Context, j *journal) error {
	b, err := json.Marshal(j)
	if err != nil {
		return err
	}
	if err := r.ledger.PutJobStates(ctx, map[string][]byte{stateJournal: b}); err != nil {
		return fmt.Errorf("retention state: %w", err)
	}
	return nil
}

func (r *Runner) removeJournal(ctx context.Context) error {
	if err := r.ledger.PutJobStates(ctx, map[string][]byte{stateJournal: nil}); err != nil {
		return fmt.Errorf("retention state: %w", err)
	}
	return nil
}

// Pending returns the deletions an interrupted run left, nil when none.
func (r *Runner) Pending(ctx context.Context) ([]Deletion, error) {
	j, err := r.loadJournal(ctx)
	if err != nil || j == nil {
		return nil, err
	}
	return j.Pending, nil
}

// loadSeen returns the first-seen times of untagged manifests, by
// "repo@digest".
func (r *Runner) loadSeen(ctx context.Context) (map[string]time.Time, error) {
	if err := r.migrate(ctx); err != nil {
		return nil, err
	}
	st, err := r.ledger.JobStates(ctx, stateSeen)
	if err != nil {
		return nil, fmt.Errorf("retention first-seen times: %w", err)
	}
	seen := make(map[string]time.Time, len(st))
	for k, v := range st {
		t, err := time.Parse(time.RFC3339Nano, string(v))
		if err != nil {
			return nil, fmt.Errorf("retention first-seen time %s: %w", k, err)
		}
		seen[strings.TrimPrefix(k, stateSeen)] = t
	}
	return seen, nil
}

// saveSeen records the first-seen times in seen that old lacks.
func (r *Runner) saveSeen(ctx context.Context, old, seen map[string]time.Time) error {
	add := map[string][]byte{}
	for k, t := range seen {
		if _, ok := old[k]; !ok {
			add[stateSeen+k] = []byte(t.UTC().Format(time.RFC3339Nano))
		}
	}
	if len(add) == 0 {
		return nil
	}
	if err := r.ledger.PutJobStates(ctx, add); err != nil {
		return fmt.Errorf("retention first-seen times: %w", err)
	}
	return nil
}
