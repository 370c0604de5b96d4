package server

import (
	"fmt"

	"github.com/rs/zerolog"

	"github.com/taglock/taglock/internal/auth"
	"github.com/taglock/taglock/internal/config"
	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/proxy"
)

// clientAuth builds the authenticator and access rules the auth and access
// sections describe; a nil Authenticator means authentication is off.
func clientAuth(cfg config.Config, log zerolog.Logger) (proxy.Authenticator, policy.Access, error) {
	access, err := cfg.AccessPolicy()
	if err != nil {
		return nil, policy.Access{}, err
	}
	switch cfg.Auth.Mode {
	case "", "none":
		return nil, policy.Access{}, nil
	case "htpasswd":
		h, err := auth.NewHtpasswd(cfg.Auth.Htpasswd.Path, cfg.Auth.Htpasswd.Realm, cfg.Auth.Groups)
		if err != nil {
			return nil, policy.Access{}, fmt.Errorf("auth.htpasswd: %w", err)
		}
		log.Info().Str("auth", "htpasswd").Str("path", cfg.Auth.Htpasswd.Path).Int("rules", len(access.Rules)).Msg("client authentication on")
		return h, access, nil
	}
	return nil, policy.Access{}, fmt.Errorf("auth.mode %q is not supported", cfg.Auth.Mode)
}
