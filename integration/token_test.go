package integration

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/auth/token" // also registers the upstream's token auth
	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/taglock/taglock/internal/config"
)

// The names the test token service and its relying parties agree on.
const (
	tokenService = "harbor-registry"
	tokenIssuer  = "harbor-token-issuer"
)

// testIssuer is a small Docker token service, like Harbor's: it checks
// Basic credentials, grants what each user may have of the scopes asked
// for, and signs JWTs with a test key whose public half it publishes as a
// JWKS file.
type testIssuer struct {
	key  *ecdsa.PrivateKey
	kid  string
	JWKS string // path of the JWKS file
	URL  string // the realm
	// grant decides which of the actions asked for user ("" = anonymous)
	// gets on repo.
	grant func(user, repo string, asked []string) []string
	// issued counts the tokens issued.
	issued atomic.Int64
}

// mustIssuer starts a token service on loopback, stopped at cleanup.
func mustIssuer(t *testing.T, grant func(user, repo string, asked []string) []string) *testIssuer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	is := &testIssuer{key: key, kid: "test-key-1", grant: grant}
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: is.kid, Algorithm: string(jose.ES256), Use: "sig"}}}
	b, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	is.JWKS = filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(is.JWKS, b, 0o600); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// A host name, not an IP literal: go-containerregistry refuses realms on
	// private and loopback IP literals (SSRF protection).
	is.URL = fmt.Sprintf("http://localhost:%d/service/token", ln.Addr().(*net.TCPAddr).Port)
	srv := &http.Server{Handler: http.HandlerFunc(is.serve), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return is
}

func (is *testIssuer) serve(w http.ResponseWriter, r *http.Request) {
	user := ""
	if u, p, ok := r.BasicAuth(); ok {
		if authUsers[u] == "" || authUsers[u] != p {
			http.Error(w, "bad credentials", http.StatusUnauthorized)
			return
		}
		user = u
	}
	if r.URL.Query().Get("service") != tokenService {
		http.Error(w, "unknown service", http.StatusBadRequest)
		return
	}
	var access []*token.ResourceActions
	for _, sc := range r.URL.Query()["scope"] {
		parts := strings.Split(sc, ":")
		if len(parts) != 3 || parts[0] != "repository" {
			continue
		}
		if got := is.grant(user, parts[1], strings.Split(parts[2], ",")); len(got) > 0 {
			access = append(access, &token.ResourceActions{Type: "repository", Name: parts[1], Actions: got})
		}
	}
	tok, err := is.mint(user, access, time.Now().Add(5*time.Minute), is.key)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	is.issued.Add(1)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"token": tok, "access_token": tok, "expires_in": 300})
}

// mint signs a token for sub with access, expiring at exp, with key.
func (is *testIssuer) mint(sub string, access []*token.ResourceActions, exp time.Time, key *ecdsa.PrivateKey) (string, error) {
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", is.kid))
	if err != nil {
		return "", err
	}
	id := make([]byte, 8)
	_, _ = rand.Read(id)
	claims := token.ClaimSet{Issuer: tokenIssuer, Subject: sub, Audience: token.AudienceList{tokenService},
		Expiration: exp.Unix(), NotBefore: time.Now().Add(-time.Minute).Unix(), IssuedAt: time.Now().Unix(),
		JWTID: hex.EncodeToString(id), Access: access}
	return jwt.Signed(signer).Claims(claims).Serialize()
}

// mustMint is mint with the issuer's key that fails the test on error.
func (is *testIssuer) mustMint(t *testing.T, sub, repo string, actions ...string) string {
	t.Helper()
	tok, err := is.mint(sub, []*token.ResourceActions{{Type: "repository", Name: repo, Actions: actions}}, time.Now().Add(time.Minute), is.key)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// mustTokenUpstream is a Distribution registry that requires tokens from
// is, like Harbor's registry does, and counts the requests it receives.
func mustTokenUpstream(t *testing.T, is *testIssuer) *Upstream {
	t.Helper()
	return MustUpstreamWith(t, UpstreamOptions{Auth: fmt.Sprintf("  token:\n    realm: %q\n    service: %q\n    issuer: %q\n    jwks: %q\n",
		is.URL, tokenService, tokenIssuer, is.JWKS)})
}

// harborGrant is the token service's own policy: alice and dev get what
// they ask for in harbor/**, anyone gets pull.
func harborGrant(user, repo string, asked []string) []string {
	var out []string
	for _, a := range asked {
		if a == "pull" || (user != "" && strings.HasPrefix(repo, "harbor/")) {
			out = append(out, a)
		}
	}
	return out
}

// withTokenAuth points taglock at the issuer and the token upstream, in
// passthrough, with access rules that let the release bot write v* tags
// and developers anything in harbor/dev/**.
func withTokenAuth(is *testIssuer, up string) func(*config.Config) {
	return func(c *config.Config) {
		c.Upstream.URL = "http://" + up
		c.Auth = config.Auth{Mode: "token", Token: config.TokenAuth{Realm: is.URL, Service: tokenService, Issuer: tokenIssuer, JWKS: is.JWKS},
			Groups: map[string][]string{"releasers": {"release-bot"}}}
		c.Access = []config.AccessRule{
			{Subjects: []string{"group:releasers"}, Repositories: []string{"harbor/prod/**"}, Tags: []string{"v*"}, Actions: []string{"pull", "push"}},
			{Subjects: []string{"authenticated"}, Repositories: []string{"harbor/dev/**"}, Actions: []string{"pull", "push", "delete"}},
			{Subjects: []string{"*"}, Repositories: []string{"harbor/**"}, Actions: []string{"pull"}},
		}
	}
}

// TestTokenHarborLike is the Harbor-like setup: a Distribution upstream that
// requires tokens from a token service, and taglock in token + passthrough
// mode in front. A client logs in at the token service through taglock's
// challenge and pushes and pulls; taglock's access rules still apply to the
// verified subject; a token minted for another repository, a forged token
// and an expired one are refused before anything reaches the upstream.
func TestTokenHarborLike(t *testing.T) {
	t.Parallel()
	is := mustIssuer(t, harborGrant)
	up := mustTokenUpstream(t, is)
	e := MustEnv(t, Embedded, withTokenAuth(is, up.Addr))

	resp, _ := do(t, http.MethodGet, e.URL("/v2/"), nil, nil)
	want := fmt.Sprintf(`Bearer realm=%q,service=%q`, is.URL, tokenService)
	if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") != want {
		t.Fatalf("anonymous ping: %d %q, want 401 %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"), want)
	}

	img := MustImage(t)
	if err := pushAs(t, e.Addr, "dev", "harbor/dev/app:1", img); err != nil {
		t.Fatalf("dev pushes harbor/dev/app:1 with a token: %v", err)
	}
	if got, err := remote.Head(e.Ref(t, "harbor/dev/app:1"), as(t, "")...); err != nil || got.Digest.String() != MustDigest(t, img).String() {
		t.Fatalf("anonymous pull with an anonymous token: %v, %v", got, err)
	}
	b, err := e.Ledger().Binding(t.Context(), "harbor/dev/app", "1")
	if err != nil || b.PushedBy != "dev" {
		t.Fatalf("binding %+v, %v; want pushed by dev, the token's subject", b, err)
	}

	// The token service would grant dev anything in harbor/**, but
	// taglock's rules keep prod to the release bot's v* tags.
	err = pushAs(t, e.Addr, "dev", "harbor/prod/app:v1", img)
	if got := ggcrError(t, err); got.Status != http.StatusForbidden {
		t.Fatalf("dev pushes to harbor/prod: %d %s, want 403", got.Status, got.Code)
	}
	if err := pushAs(t, e.Addr, "release-bot", "harbor/prod/app:v1", img); err != nil {
		t.Fatalf("release-bot pushes harbor/prod/app:v1: %v", err)
	}

	mf := MustManifest(t, img)
	before := up.requests.Load()
	tests := []struct {
		name, token, wantChallenge string
	}{
		{"a token for another repository", is.mustMint(t, "dev", "harbor/dev/other", "pull", "push"), `error="insufficient_scope"`},
		{"a token with pull only", is.mustMint(t, "dev", "harbor/dev/app", "pull"), `error="insufficient_scope"`},
		{"a token signed by another key", func() string {
			k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			tok, _ := is.mint("dev", []*token.ResourceActions{{Type: "repository", Name: "harbor/dev/app", Actions: []string{"push"}}}, time.Now().Add(time.Minute), k)
			return tok
		}(), "Bearer realm="},
		{"an expired token", func() string {
			tok, _ := is.mint("dev", []*token.ResourceActions{{Type: "repository", Name: "harbor/dev/app", Actions: []string{"push"}}}, time.Now().Add(-time.Hour), is.key)
			return tok
		}(), "Bearer realm="},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := do(t, http.MethodPut, e.URL("/v2/harbor/dev/app/manifests/2"), mf.Raw,
				http.Header{"Content-Type": {mf.MediaType}, "Authorization": {"Bearer " + tc.token}})
			if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(resp.Header.Get("WWW-Authenticate"), tc.wantChallenge) {
				t.Fatalf("PUT harbor/dev/app:2: %d %q %s; want 401 with %s", resp.StatusCode, resp.Header.Get("WWW-Authenticate"), body, tc.wantChallenge)
			}
			if !strings.Contains(resp.Header.Get("WWW-Authenticate"), `scope="repository:harbor/dev/app:pull,push"`) {
				t.Errorf("challenge %q does not name the scope of harbor/dev/app", resp.Header.Get("WWW-Authenticate"))
			}
		})
	}
	if n := up.requests.Load() - before; n != 0 {
		t.Fatalf("%d refused requests reached the upstream", n)
	}
	// The right token is accepted and forwarded as it is: the upstream
	// verifies it too.
	resp, body := do(t, http.MethodPut, e.URL("/v2/harbor/dev/app/manifests/2"), mf.Raw,
		http.Header{"Content-Type": {mf.MediaType}, "Authorization": {"Bearer " + is.mustMint(t, "dev", "harbor/dev/app", "pull", "push")}})
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT with a token for harbor/dev/app: %d %s", resp.StatusCode, body)
	}
}

// TestTokenCatalogNeedsCatalogScope ensures the catalog asks for the
// registry:catalog:* scope and lists only what the subject may pull.
func TestTokenCatalogNeedsCatalogScope(t *testing.T) {
	t.Parallel()
	is := mustIssuer(t, harborGrant)
	up := mustTokenUpstream(t, is)
	e := MustEnv(t, Embedded, withTokenAuth(is, up.Addr))
	resp, _ := do(t, http.MethodGet, e.URL("/v2/_catalog"), nil, nil)
	if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(resp.Header.Get("WWW-Authenticate"), `scope="registry:catalog:*"`) {
		t.Fatalf("catalog without a token: %d %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	}
}

// TestUpstreamTokenRobotAccount ensures upstream.auth token: taglock
// performs the token handshake against the upstream's realm with its own
// robot account (password from a file), so clients that send no
// credentials push and pull, and tokens are cached per scope rather than
// fetched for every request.
func TestUpstreamTokenRobotAccount(t *testing.T) {
	t.Parallel()
	is := mustIssuer(t, harborGrant)
	up := mustTokenUpstream(t, is)
	pw := filepath.Join(t.TempDir(), "robot-password")
	if err := os.WriteFile(pw, []byte(authUsers["admin"]+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e := MustEnv(t, Embedded, func(c *config.Config) {
		c.Upstream.URL = "http://" + up.Addr
		c.Upstream.Auth = config.UpstreamAuth{Mode: "token", Username: "admin", PasswordFile: pw}
	})
	img := MustImage(t)
	MustPush(t, e.Addr, "harbor/ci/app:1", img)
	if got := mustServed(t, e.Addr, "harbor/ci/app:1"); got != MustDigest(t, img) {
		t.Fatalf("harbor/ci/app:1 serves %s, want %s", got, MustDigest(t, img))
	}
	issued := is.issued.Load()
	if issued == 0 || issued > 3 {
		t.Fatalf("%d tokens issued for one push and one pull; want one per scope (at most 3)", issued)
	}
	for range 5 {
		mustServed(t, e.Addr, "harbor/ci/app:1")
	}
	if n := is.issued.Load() - issued; n != 0 {
		t.Fatalf("%d more tokens issued for repeated pulls; want the cached one reused", n)
	}
	// Without the robot account the upstream refuses the same pull.
	resp, _ := do(t, http.MethodGet, "http://"+up.Addr+"/v2/harbor/ci/app/manifests/1", nil, nil)
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("direct anonymous GET on the upstream: %d, want 401", resp.StatusCode)
	}
}
