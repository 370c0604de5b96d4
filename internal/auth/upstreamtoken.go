package auth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// ErrTokenHandshake is returned, wrapped, when the upstream's token service
// does not issue a token to taglock's service account.
var ErrTokenHandshake = errors.New("upstream token handshake failed")

// defaultTokenLife is how long a token without expires_in is used, as the
// Docker token specification says.
const defaultTokenLife = 60 * time.Second

// BearerToken is an http.RoundTripper that performs the Docker token
// handshake against the upstream's realm with taglock's own service account
// (a Harbor robot account, say) and sends each request with a token for
// exactly the scope it needs. Tokens are cached per scope until shortly
// before they expire. The client's Authorization is never forwarded.
type BearerToken struct {
	secret Secret
	next   http.RoundTripper
	now    func() time.Time

	fetch sync.Mutex // one handshake at a time, so concurrent requests share a token

	mu      sync.Mutex
	realm   string // learnt from the upstream's first challenge
	service string
	tokens  map[string]cachedToken // scope -> token
}

type cachedToken struct {
	token string
	until time.Time
}

// NewBearerToken returns a BearerToken sending requests through next.
func NewBearerToken(secret Secret, next http.RoundTripper) *BearerToken {
	return &BearerToken{secret: secret, next: next, now: time.Now, tokens: map[string]cachedToken{}}
}

// scopeFor is the token scope a request to the distribution API needs; ""
// for the ping, which needs only a valid token.
func scopeFor(r *http.Request) string {
	p := strings.TrimPrefix(r.URL.Path, "/v2/")
	if p == r.URL.Path || p == "" {
		return ""
	}
	if p == "_catalog" {
		return "registry:catalog:*"
	}
	// The endpoint is the last marker: references and sessions hold no "/".
	name, ok := strings.CutSuffix(p, "/tags/list")
	if !ok {
		end := 0
		for _, marker := range []string{"/manifests/", "/blobs/", "/referrers/"} {
			end = max(end, strings.LastIndex(p, marker))
		}
		if end > 0 {
			name = p[:end]
		}
	}
	actions := "pull"
	switch r.Method {
	case http.MethodGet, http.MethodHead:
	case http.MethodDelete:
		actions = "delete"
	default:
		actions = "pull,push"
	}
	return "repository:" + name + ":" + actions
}

// RoundTrip implements http.RoundTripper.
func (b *BearerToken) RoundTrip(r *http.Request) (*http.Response, error) {
	scope := scopeFor(r)
	if err := b.learnRealm(r.Context(), r.URL); err != nil {
		closeBody(r)
		return nil, err
	}
	tok, err := b.token(r.Context(), scope, false)
	if err != nil {
		closeBody(r)
		return nil, err
	}
	resp, err := b.send(r, tok)
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		return resp, err
	}
	// The token may have been revoked, or the account's rights changed:
	// fetch a fresh one and retry a request whose body can be replayed.
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
	tok, err = b.token(r.Context(), scope, true)
	if err != nil {
		return resp, nil
	}
	again, err := b.send(retry, tok)
	if err != nil {
		return resp, nil
	}
	_ = resp.Body.Close()
	return again, nil
}

func closeBody(r *http.Request) {
	if r.Body != nil {
		_ = r.Body.Close()
	}
}

func (b *BearerToken) send(r *http.Request, tok string) (*http.Response, error) {
	out := r.Clone(r.Context())
	out.Header.Del("Authorization")
	if tok != "" {
		out.Header.Set("Authorization", "Bearer "+tok)
	}
	return b.next.RoundTrip(out)
}

// learnRealm pings the upstream once to read its Bearer challenge.
func (b *BearerToken) learnRealm(ctx context.Context, u *url.URL) error {
	b.mu.Lock()
	known := b.realm != ""
	b.mu.Unlock()
	if known {
		return nil
	}
	ping := &url.URL{Scheme: u.Scheme, Host: u.Host, Path: "/v2/"}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, ping.String(), nil)
	if err != nil {
		return err
	}
	resp, err := b.next.RoundTrip(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		return fmt.Errorf("%w: the upstream's /v2/ answered %d, not a Bearer challenge", ErrTokenHandshake, resp.StatusCode)
	}
	params, ok := parseBearer(resp.Header.Get("WWW-Authenticate"))
	if !ok || params["realm"] == "" {
		return fmt.Errorf("%w: the upstream's challenge %q is not Bearer with a realm", ErrTokenHandshake, resp.Header.Get("WWW-Authenticate"))
	}
	b.mu.Lock()
	b.realm, b.service = params["realm"], params["service"]
	b.mu.Unlock()
	return nil
}

// parseBearer reads `Bearer k="v",k2="v2"`.
func parseBearer(h string) (map[string]string, bool) {
	scheme, rest, ok := strings.Cut(strings.TrimSpace(h), " ")
	if !ok || !strings.EqualFold(scheme, "bearer") {
		return nil, false
	}
	out := map[string]string{}
	for rest != "" {
		rest = strings.TrimLeft(rest, " ,")
		k, v, ok := strings.Cut(rest, "=")
		if !ok {
			break
		}
		k = strings.ToLower(strings.TrimSpace(k))
		if strings.HasPrefix(v, `"`) {
			end := strings.IndexByte(v[1:], '"')
			if end < 0 {
				return nil, false
			}
			out[k], rest = v[1:1+end], v[2+end:]
		} else {
			val, tail, _ := strings.Cut(v, ",")
			out[k], rest = strings.TrimSpace(val), tail
		}
	}
	return out, true
}

// token returns a cached token for scope, or fetches one; scope "" asks for
// a token without access, which is what the ping needs.
func (b *BearerToken) token(ctx context.Context, scope string, force bool) (string, error) {
	cached := func() (string, bool) {
		b.mu.Lock()
		defer b.mu.Unlock()
		c, ok := b.tokens[scope]
		return c.token, ok && b.now().Before(c.until)
	}
	if tok, ok := cached(); ok && !force {
		return tok, nil
	}
	b.fetch.Lock()
	defer b.fetch.Unlock()
	if tok, ok := cached(); ok && !force {
		return tok, nil
	}
	b.mu.Lock()
	realm, service := b.realm, b.service
	b.mu.Unlock()
	user, pw, err := b.secret.Credentials(ctx, force)
	if err != nil {
		return "", err
	}
	q := url.Values{}
	if scope != "" {
		// No scope (the ping) gets a token that proves the account only.
		q.Set("scope", scope)
	}
	if service != "" {
		q.Set("service", service)
	}
	if user != "" {
		q.Set("account", user)
	}
	u, err := url.Parse(realm)
	if err != nil {
		return "", fmt.Errorf("%w: realm %q: %v", ErrTokenHandshake, realm, err)
	}
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return "", err
	}
	req.SetBasicAuth(user, pw)
	resp, err := b.next.RoundTrip(req)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrTokenHandshake, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%w: %s answered %d for scope %s", ErrTokenHandshake, u.Host, resp.StatusCode, scope)
	}
	var answer struct {
		Token       string `json:"token"`
		AccessToken string `json:"access_token"`
		ExpiresIn   int    `json:"expires_in"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&answer); err != nil {
		return "", fmt.Errorf("%w: %v", ErrTokenHandshake, err)
	}
	tok := answer.Token
	if tok == "" {
		tok = answer.AccessToken
	}
	if tok == "" {
		return "", fmt.Errorf("%w: no token in the answer for scope %s", ErrTokenHandshake, scope)
	}
	life := defaultTokenLife
	if answer.ExpiresIn > 0 {
		life = time.Duration(answer.ExpiresIn) * time.Second
	}
	// Stop using a token a little before it expires, so a request sent
	// just before expiry does not arrive just after.
	life -= min(life/10, 10*time.Second)
	b.mu.Lock()
	b.tokens[scope] = cachedToken{token: tok, until: b.now().Add(life)}
	b.mu.Unlock()
	return tok, nil
}
