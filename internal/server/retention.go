package server

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/taglock/taglock/internal/config"
	"github.com/taglock/taglock/internal/retention"
	"github.com/taglock/taglock/proxy"
	"github.com/taglock/taglock/storage"
)

// PendingBlobAge is how long a blob uploaded without its manifest yet is
// protected from garbage collection.
const PendingBlobAge = time.Hour

// RetentionDir is where retention keeps its state under the data directory.
func RetentionDir(data string) string { return filepath.Join(data, "retention") }

// RegistryStorage is the embedded registry's storage root under the data
// directory (the filesystem driver's rootdirectory).
func RegistryStorage(data string) string { return filepath.Join(data, "registry", "data") }

// retentionService is retention as a running serve runs it: pull tracking,
// the write gate of embedded garbage collection, the runner (the admin
// socket's retention calls) and its schedule (retention.schedule).
type retentionService struct {
	pulls  *proxy.PullTracker
	gate   *proxy.WriteGate
	runner *retention.Runner
	cancel context.CancelFunc
	done   chan struct{}
	jobs   jobs // scheduled runs and GC happen on the replica that runs the jobs
}

// newRetentionService starts pull tracking and, in embedded mode, the write
// gate; they go into the proxy's options.
func newRetentionService(cfg config.Config, ledger storage.Ledger, j jobs, log zerolog.Logger) *retentionService {
	p := &retentionService{pulls: proxy.NewPullTracker(ledger, proxy.PullTrackerOptions{Log: log}), jobs: j}
	if cfg.Upstream.URL == "" {
		p.gate = proxy.NewWriteGate(proxy.GateOptions{Drain: cfg.Limits.GCDrainTimeout.Std(), Wait: cfg.Limits.GCWriteWait.Std()})
	}
	return p
}

// start builds the runner on the proxy and, when retention.schedule is
// set, applies it on that schedule until stop.
func (p *retentionService) start(cfg config.Config, ledger storage.Ledger, px *proxy.Drift, reg prometheus.Registerer, log zerolog.Logger, audit *zerolog.Logger) error {
	pol, err := cfg.RetentionSettings()
	if err != nil {
		return err
	}
	im, err := cfg.ImmutabilityPolicy()
	if err != nil {
		return err
	}
	o := retention.Options{Policy: pol, Immutability: im, Ledger: ledger, Upstream: px, Dir: RetentionDir(cfg.Data),
		Log: log, Audit: audit, Metrics: retention.NewMetrics(reg), Lock: p.jobs.lock()}
	if p.gate != nil {
		gate, dir := p.gate, RegistryStorage(cfg.Data)
		o.GC = func(ctx context.Context, bound retention.BoundFunc) (retention.GCResult, error) {
			if n, err := p.jobs.others(ctx); err != nil || n > 0 {
				// This gate holds this replica's writes only.
				why := fmt.Sprintf("%d other replicas share the registry's storage and may be writing to it; "+
					"taglock collects garbage only with one replica running (scale to one and run taglock retention apply)", n)
				if err != nil {
					why = "cannot tell whether other replicas are writing: " + err.Error()
				}
				return retention.GCResult{Deferred: true, Reason: why}, nil
			}
			if d := cfg.Embedded.StorageDriver(); d != "filesystem" {
				return retention.GCResult{Deferred: true, Reason: "taglock collects garbage on filesystem storage only; " +
					"the embedded registry stores on " + d + ": reclaim its space with the object store's own tools"}, nil
			}
			keep, err := bound(ctx) // before the gate: it reads the whole ledger
			if err != nil {
				return retention.GCResult{}, err
			}
			release, err := gate.Hold(ctx)
			if errors.Is(err, proxy.ErrWritesInFlight) {
				// Never collect while a write could land blobs: the
				// gate is open again and the next run collects.
				return retention.GCResult{Deferred: true, Reason: err.Error() + " (limits.gc_drain_timeout)"}, nil
			}
			if err != nil {
				return retention.GCResult{}, err
			}
			defer release()
			return retention.CollectGarbage(ctx, dir, keep, gate.Pending(time.Now().Add(-PendingBlobAge)))
		}
	}
	p.runner = retention.New(o)
	if pol.Schedule <= 0 {
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel, p.done = cancel, make(chan struct{})
	go func() {
		defer close(p.done)
		t := time.NewTicker(pol.Schedule)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			// Failures are in the run's log lines and metrics; the
			// next tick tries again. Only the replica that runs the
			// jobs applies the schedule.
			p.jobs.during(ctx, func(ctx context.Context) {
				if _, err := p.runner.Apply(ctx, retention.ApplyOptions{}); err != nil && ctx.Err() == nil {
					log.Error().Err(err).Msg("scheduled retention run failed")
				}
			})
		}
	}()
	return nil
}

// stop ends the schedule (an interrupted run resumes next time) and flushes
// the pulls collected so far.
func (p *retentionService) stop() {
	if p == nil {
		return
	}
	if p.cancel != nil {
		p.cancel()
		<-p.done
	}
	p.pulls.Close()
}
