package server

import (
	"context"
	"errors"
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

// retentionParts are the pieces of retention a running serve owns: pull
// tracking, the write gate of embedded garbage collection, the runner and
// its schedule.
type retentionParts struct {
	pulls  *proxy.PullTracker
	gate   *proxy.WriteGate
	runner *retention.Runner
	cancel context.CancelFunc
	done   chan struct{}
}

// newRetentionParts starts pull tracking and, in embedded mode, the write
// gate; they go into the proxy's options.
func newRetentionParts(cfg config.Config, ledger storage.Ledger, log zerolog.Logger) *retentionParts {
	p := &retentionParts{pulls: proxy.NewPullTracker(ledger, proxy.PullTrackerOptions{Log: log})}
	if cfg.Upstream.URL == "" {
		p.gate = proxy.NewWriteGate(proxy.GateOptions{Drain: cfg.Limits.GCDrainTimeout.Std(), Wait: cfg.Limits.GCWriteWait.Std()})
	}
	return p
}

// start builds the runner on the proxy and, when retention.schedule is
// set, applies it on that schedule until stop.
func (p *retentionParts) start(cfg config.Config, ledger storage.Ledger, px *proxy.Server, reg prometheus.Registerer, log zerolog.Logger, audit *zerolog.Logger) error {
	pol, err := cfg.RetentionSettings()
	if err != nil {
		return err
	}
	im, err := cfg.ImmutabilityPolicy()
	if err != nil {
		return err
	}
	o := retention.Options{Policy: pol, Immutability: im, Ledger: ledger, Upstream: px, Dir: RetentionDir(cfg.Data),
		Log: log, Audit: audit, Metrics: retention.NewMetrics(reg)}
	if p.gate != nil {
		gate, dir := p.gate, RegistryStorage(cfg.Data)
		o.GC = func(ctx context.Context) (retention.GCResult, error) {
			if d := cfg.Embedded.StorageDriver(); d != "filesystem" {
				return retention.GCResult{Deferred: true, Reason: "taglock collects garbage on filesystem storage only; " +
					"the embedded registry stores on " + d + ": reclaim its space with the object store's own tools"}, nil
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
			return retention.CollectGarbage(ctx, dir, gate.Pending(time.Now().Add(-PendingBlobAge)))
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
			// next tick tries again.
			if _, err := p.runner.Apply(ctx, retention.ApplyOptions{}); err != nil && ctx.Err() == nil {
				log.Error().Err(err).Msg("scheduled retention run failed")
			}
		}
	}()
	return nil
}

// stop ends the schedule (an interrupted run resumes next time) and flushes
// the pulls collected so far.
func (p *retentionParts) stop() {
	if p == nil {
		return
	}
	if p.cancel != nil {
		p.cancel()
		<-p.done
	}
	p.pulls.Close()
}
