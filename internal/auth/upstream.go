package auth

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"
)

// ErrNoPassword is returned, wrapped, when the service account's password
// cannot be obtained; the request is then not sent.
var ErrNoPassword = errors.New("upstream password unavailable")

// Secret yields the upstream service account's credentials. Implementations
// re-read their source when it may have changed; force asks for a fresh
// read after the upstream refused the current credentials.
type Secret interface {
	Credentials(ctx context.Context, force bool) (user, password string, err error)
}

// Static is a user and password given in the configuration or read once
// from the environment.
type Static struct{ User, Password string }

// Credentials implements Secret.
func (s Static) Credentials(context.Context, bool) (string, string, error) {
	return s.User, s.Password, nil
}

// PasswordFile reads the password from a file, again whenever the file's
// size or modification time changes: `aws ecr get-login-password > FILE`
// from a cron job rotates it under a running taglock. Surrounding
// whitespace is trimmed.
type PasswordFile struct {
	User string
	Path string

	mu       sync.Mutex
	stamp    string
	password string
}

// Credentials implements Secret.
func (p *PasswordFile) Credentials(_ context.Context, force bool) (string, string, error) {
	fi, err := os.Stat(p.Path)
	if err != nil {
		return "", "", fmt.Errorf("%w: %v", ErrNoPassword, err)
	}
	stamp := fmt.Sprintf("%d@%d", fi.Size(), fi.ModTime().UnixNano())
	p.mu.Lock()
	defer p.mu.Unlock()
	if !force && p.stamp == stamp && p.password != "" {
		return p.User, p.password, nil
	}
	b, err := os.ReadFile(p.Path)
	if err != nil {
		return "", "", fmt.Errorf("%w: %v", ErrNoPassword, err)
	}
	pw := strings.TrimSpace(string(b))
	if pw == "" {
		return "", "", fmt.Errorf("%w: %s is empty", ErrNoPassword, p.Path)
	}
	p.stamp, p.password = stamp, pw
	return p.User, pw, nil
}

// helperTTL is how long a credential helper's answer is reused.
const helperTTL = 5 * time.Minute

// CredentialHelper runs `docker-credential-NAME get` with the registry's
// server URL on stdin, the Docker credential helper protocol, and reuses
// the answer for a few minutes.
type CredentialHelper struct {
	// Program is the helper's path or name, e.g. docker-credential-ecr-login.
	Program string
	// Server is the registry's host, e.g. 123.dkr.ecr.eu-west-1.amazonaws.com.
	Server string
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	mu       sync.Mutex
	until    time.Time
	user, pw string
}

// Credentials implements Secret.
func (h *CredentialHelper) Credentials(ctx context.Context, force bool) (string, string, error) {
	now := time.Now
	if h.Now != nil {
		now = h.Now
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if !force && h.pw != "" && now().Before(h.until) {
		return h.user, h.pw, nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, h.Program, "get")
	cmd.Stdin = strings.NewReader(h.Server)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", "", fmt.Errorf("%w: %s get: %v: %s", ErrNoPassword, h.Program, err, strings.TrimSpace(stderr.String()))
	}
	var answer struct {
		Username string `json:"Username"`
		Secret   string `json:"Secret"`
	}
	if err := json.Unmarshal(out, &answer); err != nil || answer.Secret == "" {
		return "", "", fmt.Errorf("%w: %s get: answer is not {Username, Secret}", ErrNoPassword, h.Program)
	}
	h.user, h.pw, h.until = answer.Username, answer.Secret, now().Add(helperTTL)
	return h.user, h.pw, nil
}

// Basic is an http.RoundTripper that sends every request to the upstream
// with taglock's own service account instead of the client's credentials.
// taglock is then a deputy acting for its clients, so its access rules are
// the only gate. When the upstream answers 401, the secret is read again
// and a request whose body can be replayed is sent once more.
type Basic struct {
	secret Secret
	next   http.RoundTripper
}

// NewBasic returns a Basic sending requests through next.
func NewBasic(secret Secret, next http.RoundTripper) *Basic {
	return &Basic{secret: secret, next: next}
}

// RoundTrip implements http.RoundTripper.
func (b *Basic) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := b.send(r, false)
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		return resp, err
	}
	if r.Body != nil && r.Body != http.NoBody && r.GetBody == nil {
		return resp, nil
	}
	retry := r
	if r.GetBody != nil {
		body, err := r.GetBody()
		if err != nil {
			return resp, nil
		}
		retry = r.Clone(r.Context())
		retry.Body = body
	}
	again, err := b.send(retry, true)
	if err != nil {
		return resp, nil
	}
	_ = resp.Body.Close()
	return again, nil
}

func (b *Basic) send(r *http.Request, force bool) (*http.Response, error) {
	user, pw, err := b.secret.Credentials(r.Context(), force)
	if err != nil {
		if r.Body != nil {
			_ = r.Body.Close()
		}
		return nil, err
	}
	out := r.Clone(r.Context())
	out.Header.Del("Authorization")
	out.SetBasicAuth(user, pw)
	return b.next.RoundTrip(out)
}
