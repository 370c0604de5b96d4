package server

import (
	"context"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/taglock/taglock/internal/admin"
	"github.com/taglock/taglock/proxy"
)

// verifyTools is what the scheduled verify runs (proxy.Drift).
type verifyTools interface {
	Verify(ctx context.Context, o proxy.VerifyOptions) (proxy.VerifyReport, error)
}

// verifier runs the proxy's Verify on a schedule (verify.schedule) and
// reports what it finds: taglock_drift_findings and one "drift" audit event
// per finding. It never repairs.
type verifier struct {
	tools   verifyTools
	metrics *proxy.Metrics
	audit   zerolog.Logger
	log     zerolog.Logger
	every   time.Duration
	jobs    jobs // verify runs on the replica that runs the jobs

	mu   sync.Mutex
	last *admin.DriftRun

	cancel context.CancelFunc
	done   chan struct{}
}

// newVerifier returns the scheduled verify, not started, running every
// every; nil, which starts nothing, when every is not positive (no
// verify.schedule).
func newVerifier(every time.Duration, tools verifyTools, metrics *proxy.Metrics, audit, log zerolog.Logger, j jobs) *verifier {
	if every <= 0 {
		return nil
	}
	return &verifier{tools: tools, metrics: metrics, audit: audit, log: log, every: every, jobs: j}
}

// start runs a first verify at once, then one every v.every, until stop,
// whenever this replica runs the jobs; the others skip their turns.
func (v *verifier) start() {
	if v == nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	v.cancel, v.done = cancel, make(chan struct{})
	go func() {
		defer close(v.done)
		t := time.NewTicker(v.every)
		defer t.Stop()
		for {
			v.jobs.during(ctx, v.run)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
}

// stop ends the schedule and waits for a run in progress to give up.
func (v *verifier) stop() {
	if v == nil || v.cancel == nil {
		return
	}
	v.cancel()
	<-v.done
}

func (v *verifier) run(ctx context.Context) {
	start := time.Now()
	rep, err := v.tools.Verify(ctx, proxy.VerifyOptions{})
	if ctx.Err() != nil {
		return // shutting down
	}
	st := &admin.DriftRun{Time: time.Now().UTC()}
	if err != nil {
		st.Error = err.Error()
		v.log.Error().Err(err).Msg("scheduled verify failed")
		if v.metrics != nil {
			v.metrics.Verified(nil, err, st.Time)
		}
	} else {
		st.Report = rep
		for _, f := range rep.Findings {
			ev := v.audit.Info()
			if f.Immutable {
				ev = v.audit.Warn()
			}
			ev.Str("event", "drift").Str("drift", f.Kind).Str("repo", f.Repo).Str("tag", f.Tag).Stringer("mode", f.Mode).
				Str("recorded", f.Recorded.String()).Str("actual", f.Actual.String()).Bool("immutable", f.Immutable).
				Bool("repairable", f.Repairable).Msg(driftMessage(f))
		}
		if v.metrics != nil {
			v.metrics.Verified(&rep, nil, st.Time)
		}
		v.log.Info().Int("repositories", rep.Repositories).Int("tags", rep.Tags).Int("findings", len(rep.Findings)).
			Dur("duration", time.Since(start)).Msg("scheduled verify")
	}
	v.mu.Lock()
	v.last = st
	v.mu.Unlock()
}

// status is the scheduled verify's state for the JSON API; empty without
// a schedule.
func (v *verifier) status() admin.DriftStatus {
	if v == nil {
		return admin.DriftStatus{}
	}
	return admin.DriftStatus{Schedule: v.every.String(), Last: v.Last()}
}

// Last is the outcome of the last scheduled verify; nil before the first
// run ends.
func (v *verifier) Last() *admin.DriftRun {
	if v == nil {
		return nil
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.last
}

func driftMessage(f proxy.Finding) string {
	switch f.Kind {
	case proxy.DriftMoved:
		msg := "tag moved on the upstream around taglock"
		if f.Immutable {
			msg += "; taglock verify --repair puts it back"
		}
		return msg
	case proxy.DriftIncomplete:
		return "the upstream lost content the tag's manifest references, so the tag no longer pulls; restore it from a copy of the image (taglock keeps manifests, not blobs)"
	case proxy.DriftDeleted:
		msg := "tag deleted on the upstream around taglock"
		if f.Immutable {
			msg += "; taglock verify --repair puts it back"
		}
		return msg
	}
	return "tag on the upstream that the ledger never recorded; taglock import adopts it"
}
