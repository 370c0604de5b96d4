package server

import (
	"net/http"
	"testing"

	"github.com/taglock/taglock/internal/config"
)

type captureRT struct{ got http.Header }

func (c *captureRT) RoundTrip(r *http.Request) (*http.Response, error) {
	c.got = r.Header.Clone()
	return &http.Response{StatusCode: http.StatusOK, Body: http.NoBody, Request: r}, nil
}

// With auth.mode htpasswd and upstream passthrough, a client's taglock
// password never reaches the upstream; bearer tokens and every other
// combination pass through as they are.
func TestKeepPasswords(t *testing.T) {
	tests := []struct {
		name, auth, upstream, header string
		forwarded                    bool
	}{
		{"htpasswd passthrough drops Basic", "htpasswd", "passthrough", "Basic dTpw", false},
		{"htpasswd passthrough keeps Bearer", "htpasswd", "passthrough", "Bearer x.y.z", true},
		{"htpasswd with upstream basic leaves it to the deputy", "htpasswd", "basic", "Basic dTpw", true},
		{"no auth forwards", "none", "passthrough", "Basic dTpw", true},
		{"token passthrough forwards", "token", "passthrough", "Bearer x.y.z", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := config.Default()
			cfg.Auth.Mode, cfg.Upstream.Auth.Mode = tt.auth, tt.upstream
			rt := &captureRT{}
			req, _ := http.NewRequest(http.MethodGet, "http://upstream.example/v2/", nil)
			req.Header.Set("Authorization", tt.header)
			if _, err := keepPasswords(cfg, rt).RoundTrip(req); err != nil {
				t.Fatal(err)
			}
			if got := rt.got.Get("Authorization") != ""; got != tt.forwarded {
				t.Errorf("Authorization forwarded = %v, want %v", got, tt.forwarded)
			}
			if req.Header.Get("Authorization") != tt.header {
				t.Error("the caller's request was modified")
			}
		})
	}
}
