package server

import (
	"context"
	"fmt"
	"net/url"

	"github.com/rs/zerolog"

	"github.com/taglock/taglock/internal/config"
	"github.com/taglock/taglock/proxy"
	"github.com/taglock/taglock/proxy/embedded"
)

// openUpstream starts the registry cfg names: the embedded one on
// cfg.Data when upstream.url is empty, which it returns for the caller to
// shut down, or the remote one with the configured transport and
// credentials. serve and the offline commands both start it here.
func openUpstream(ctx context.Context, cfg config.Config, log zerolog.Logger) (proxy.Upstream, *embedded.Registry, error) {
	if cfg.Upstream.URL == "" {
		reg, err := embedded.New(ctx, embeddedOptions(cfg, log))
		if err != nil {
			return nil, nil, err
		}
		return proxy.NewInProcess(reg.Handler()), reg, nil
	}
	base, err := url.Parse(cfg.Upstream.URL)
	if err != nil {
		return nil, nil, fmt.Errorf("upstream.url: %w", err)
	}
	tr, err := transport(cfg.Upstream, log)
	if err != nil {
		return nil, nil, err
	}
	creds, err := upstreamCredentials(cfg.Upstream, tr, log)
	if err != nil {
		return nil, nil, err
	}
	return proxy.NewRemote(base, keepPasswords(cfg, creds), log), nil, nil
}

// cacheOptions configures the manifest cache. When clients' credentials go
// through to a remote upstream, the upstream decides who may pull, and a
// cached answer needs its recent confirmation; otherwise taglock's own
// access rules (or none, with auth.mode none) decide alone.
func cacheOptions(cfg config.Config) proxy.CacheOptions {
	o := proxy.CacheOptions{Size: int64(cfg.Cache.Size)}
	if cfg.Upstream.URL != "" && (cfg.Upstream.Auth.Mode == "" || cfg.Upstream.Auth.Mode == "passthrough") {
		o.ConfirmTTL = cfg.Cache.AuthTTL.Std()
	}
	return o
}
