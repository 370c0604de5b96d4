package server

import (
	"context"
	"net/url"

	"github.com/rs/zerolog"

	"github.com/taglock/taglock/internal/config"
	"github.com/taglock/taglock/proxy"
	"github.com/taglock/taglock/proxy/embedded"
)

// Offline is taglock's upstream and proxy without a listener, for the
// commands (import, verify) that need the upstream while serve is not
// running. It uses a ledger the caller opened and closes only what it
// started itself.
type Offline struct {
	proxy    *proxy.Server
	registry *embedded.Registry
}

// NewOffline starts the upstream cfg names (the embedded registry on
// cfg.Data, or the remote one) and a proxy over it and ledger. The config
// must have passed Validate.
func NewOffline(ctx context.Context, cfg config.Config, ledger proxy.Ledger, log zerolog.Logger) (*Offline, error) {
	o := &Offline{}
	var up proxy.Upstream
	if cfg.Upstream.URL == "" {
		reg, err := embedded.New(ctx, embeddedOptions(cfg, log))
		if err != nil {
			return nil, err
		}
		o.registry = reg
		up = proxy.NewInProcess(reg.Handler())
	} else {
		base, err := url.Parse(cfg.Upstream.URL)
		if err != nil {
			return nil, err
		}
		tr, err := transport(cfg.Upstream, log)
		if err != nil {
			return nil, err
		}
		creds, err := upstreamCredentials(cfg.Upstream, tr, log)
		if err != nil {
			return nil, err
		}
		up = proxy.NewRemote(base, keepPasswords(cfg, creds), log)
	}
	im, err := cfg.ImmutabilityPolicy()
	if err != nil {
		_ = o.Close()
		return nil, err
	}
	o.proxy = proxy.New(proxy.Options{Upstream: up, Ledger: ledger, Immutability: im, Log: log,
		LookupTimeout: cfg.Upstream.Timeout.Std(), MaxManifestSize: int64(cfg.Limits.MaxManifestSize)})
	return o, nil
}

// Proxy is the proxy whose tools (ImportTags, Verify, Repair) the commands
// run.
func (o *Offline) Proxy() *proxy.Server { return o.proxy }

// Close stops the embedded registry, if one was started.
func (o *Offline) Close() error {
	if o.registry != nil {
		return o.registry.Shutdown()
	}
	return nil
}
