package server

import (
	"context"

	"github.com/rs/zerolog"

	"github.com/taglock/taglock/internal/config"
	"github.com/taglock/taglock/proxy"
	"github.com/taglock/taglock/proxy/embedded"
)

// Offline is taglock's upstream and drift tools without a listener, for the
// commands (import, verify) that need the upstream while serve is not
// running. It uses a ledger the caller opened and closes only what it
// started itself.
type Offline struct {
	drift    *proxy.Drift
	registry *embedded.Registry
}

// NewOffline starts the upstream cfg names (the embedded registry on
// cfg.Data, or the remote one) and the drift tools over it and ledger. The config
// must have passed Validate.
func NewOffline(ctx context.Context, cfg config.Config, ledger proxy.Ledger, log zerolog.Logger) (*Offline, error) {
	o := &Offline{}
	up, reg, err := openUpstream(ctx, cfg, log)
	if err != nil {
		return nil, err
	}
	o.registry = reg
	im, err := cfg.ImmutabilityPolicy()
	if err != nil {
		_ = o.Close()
		return nil, err
	}
	o.drift = proxy.NewDrift(proxy.Options{Upstream: up, Ledger: ledger, Immutability: im, Log: log,
		LookupTimeout: cfg.Upstream.Timeout.Std(), MaxManifestSize: int64(cfg.Limits.MaxManifestSize)})
	return o, nil
}

// Drift is the operator tools (ImportTags, Verify, Repair) the commands run.
func (o *Offline) Drift() *proxy.Drift { return o.drift }

// Close stops the embedded registry, if one was started.
func (o *Offline) Close() error {
	if o.registry != nil {
		return o.registry.Shutdown()
	}
	return nil
}
