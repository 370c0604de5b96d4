package integration

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	rcconfig "github.com/regclient/regclient"
	rchost "github.com/regclient/regclient/config"
	"github.com/regclient/regclient/types/ref"
	"golang.org/x/crypto/bcrypt"
	orasauth "oras.land/oras-go/v2/registry/remote/auth"

	"github.com/taglock/taglock/internal/config"
)

// The users of the access tests and their passwords.
var authUsers = map[string]string{
	"release-bot": "bot-secret",
	"dev":         "dev-secret",
	"reader":      "reader-secret",
	"admin":       "admin-secret",
}

// mustHtpasswd writes a bcrypt htpasswd file for users and returns its path.
func mustHtpasswd(t *testing.T, users map[string]string) string {
	t.Helper()
	var b strings.Builder
	for u, p := range users {
		h, err := bcrypt.GenerateFromPassword([]byte(p), bcrypt.MinCost)
		if err != nil {
			t.Fatalf("bcrypt: %v", err)
		}
		fmt.Fprintf(&b, "%s:%s\n", u, h)
	}
	path := filepath.Join(t.TempDir(), "htpasswd")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatalf("write htpasswd: %v", err)
	}
	return path
}

// withIssueACL is the access section of the issue, plus a reader who may
// pull prod and an admin who may do anything anywhere else is not decided.
func withIssueACL(htpasswd string) func(*config.Config) {
	return func(c *config.Config) {
		c.Auth = config.Auth{Mode: "htpasswd", Htpasswd: config.HtpasswdAuth{Path: htpasswd},
			Groups: map[string][]string{"releasers": {"release-bot"}}}
		c.Access = []config.AccessRule{
			{Subjects: []string{"group:releasers"}, Repositories: []string{"prod/**"}, Tags: []string{"v*"}, Actions: []string{"pull", "push"}},
			{Subjects: []string{"group:releasers"}, Repositories: []string{"public/**"}, Actions: []string{"pull", "push"}},
			{Subjects: []string{"authenticated"}, Repositories: []string{"dev/**"}, Actions: []string{"pull", "push", "delete"}},
			{Subjects: []string{"anonymous", "authenticated"}, Repositories: []string{"public/**"}, Actions: []string{"pull"}},
			{Subjects: []string{"user:reader"}, Repositories: []string{"prod/**"}, Actions: []string{"pull"}},
			{Subjects: []string{"admin"}, Repositories: []string{"**"}, Actions: []string{"pull", "push", "delete"}},
		}
	}
}

// as returns go-containerregistry options that log in as user, or
// anonymously for "".
func as(t *testing.T, user string) []remote.Option {
	a := authn.Anonymous
	if user != "" {
		a = &authn.Basic{Username: user, Password: authUsers[user]}
	}
	return append(ggcrOpts(t), remote.WithAuth(a))
}

// basic is the header that logs in as user; nil for anonymous.
func basic(user string) http.Header {
	if user == "" {
		return nil
	}
	req, _ := http.NewRequest(http.MethodGet, "/", nil)
	req.SetBasicAuth(user, authUsers[user])
	return req.Header
}

// pushAs pushes img to addr/s as user and returns the error.
func pushAs(t *testing.T, addr, user, s string, img v1.Image) error {
	t.Helper()
	return remote.Write(mustRef(t, addr, s), img, as(t, user)...)
}

// wantAccessDenied checks that e is a 403 DENIED naming the identity, the
// action, the target and the rule.
func wantAccessDenied(t *testing.T, e OCIError, user, action, target, rule string) {
	t.Helper()
	if e.Status != http.StatusForbidden || e.Code != "DENIED" {
		t.Fatalf("got %d %s (%s), want 403 DENIED", e.Status, e.Code, e.Message)
	}
	says := rule
	if rule == "access: no rule applies" {
		says = "no access rule applies"
	}
	for _, s := range []string{user, action, target, says} {
		if !strings.Contains(e.Message, s) {
			t.Errorf("message %q does not name %q", e.Message, s)
		}
	}
	if e.Detail["identity"] != user || e.Detail["action"] != action || e.Detail["rule"] != rule {
		t.Errorf("detail %v does not name identity %q, action %q and rule %q", e.Detail, user, action, rule)
	}
}

// TestAccessMatrix ensures every cell of the issue's ACL matrix behaves as
// written with real client libraries: the release bot pushes v* tags to
// prod but no other tag, a developer pushes to dev but not to prod, a
// pull-only user pulls but cannot push, anonymous pulls public but is
// challenged for anything else, and a wrong password is challenged. Ledger
// records name the verified user.
func TestAccessMatrix(t *testing.T) {
	forEachMode(t, func(t *testing.T, m Mode) {
		e := MustEnv(t, m, withIssueACL(mustHtpasswd(t, authUsers)))
		img := MustImage(t)

		if err := pushAs(t, e.Addr, "release-bot", "prod/app:v1", img); err != nil {
			t.Fatalf("release-bot pushes prod/app:v1: %v", err)
		}
		b, err := e.Ledger().Binding(t.Context(), "prod/app", "v1")
		if err != nil || b.PushedBy != "release-bot" {
			t.Fatalf("ledger binding prod/app:v1 = %+v, %v; want pushed by release-bot", b, err)
		}

		t.Run("forbidden tag pattern", func(t *testing.T) {
			err := pushAs(t, e.Addr, "release-bot", "prod/app:latest", img)
			wantAccessDenied(t, ggcrError(t, err), "release-bot", "push", "prod/app:latest", "access: no rule applies")
		})
		t.Run("forbidden repository", func(t *testing.T) {
			err := pushAs(t, e.Addr, "dev", "prod/app:v2", MustImage(t))
			if got := ggcrError(t, err); got.Status != http.StatusForbidden {
				t.Fatalf("dev pushes to prod: got %d %s, want 403", got.Status, got.Code)
			}
			resp, body := do(t, http.MethodPost, e.URL("/v2/prod/app/blobs/uploads/"), nil, basic("dev"))
			wantAccessDenied(t, parseOCI(t, resp.StatusCode, body), "dev", "push", "prod/app", "access: no rule applies")
		})
		t.Run("allowed push", func(t *testing.T) {
			if err := pushAs(t, e.Addr, "dev", "dev/app:base", img); err != nil {
				t.Fatalf("dev pushes dev/app:base: %v", err)
			}
		})
		t.Run("pull-only user", func(t *testing.T) {
			if _, err := remote.Head(e.Ref(t, "prod/app:v1"), as(t, "reader")...); err != nil {
				t.Fatalf("reader pulls prod/app:v1: %v", err)
			}
			err := pushAs(t, e.Addr, "reader", "prod/app:v9", MustImage(t))
			wantAccessDenied(t, ggcrError(t, err), "reader", "push", "prod/app", "access[4]")
		})
		t.Run("wrong password", func(t *testing.T) {
			opts := append(ggcrOpts(t), remote.WithAuth(&authn.Basic{Username: "dev", Password: "nope"}))
			_, err := remote.Head(e.Ref(t, "dev/app:base"), opts...)
			if got := ggcrError(t, err); got.Status != http.StatusUnauthorized {
				t.Fatalf("wrong password: got %d %s, want 401", got.Status, got.Code)
			}
		})
	})
}

// TestAccessAnonymous ensures anonymous callers pull what public rules
// allow, are challenged with a Basic realm for everything else, and that a
// refused request never reaches the upstream.
func TestAccessAnonymous(t *testing.T) {
	forEachMode(t, func(t *testing.T, m Mode) {
		e := MustEnv(t, m, withIssueACL(mustHtpasswd(t, authUsers)))
		img := MustImage(t)
		if err := pushAs(t, e.Addr, "release-bot", "public/base:1", img); err != nil {
			t.Fatalf("release-bot pushes public/base:1: %v", err)
		}
		if _, err := remote.Image(e.Ref(t, "public/base:1"), as(t, "")...); err != nil {
			t.Fatalf("anonymous pulls public/base:1: %v", err)
		}
		resp, _ := do(t, http.MethodGet, e.URL("/v2/"), nil, nil)
		if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), `Basic realm=`) {
			t.Fatalf("anonymous ping: %d %q, want 401 with a Basic challenge", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
		}
		before := int64(0)
		if e.Up != nil {
			before = e.Up.Requests()
		}
		mf := MustManifest(t, img)
		resp, body := putManifest(t, e.Addr, "/v2/public/base/manifests/2", mf)
		if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") == "" {
			t.Fatalf("anonymous manifest PUT: %d %s, want 401 with a challenge", resp.StatusCode, body)
		}
		if e.Up != nil && e.Up.Requests() != before {
			t.Fatalf("the refused push reached the upstream (%d requests)", e.Up.Requests()-before)
		}
		err := pushAs(t, e.Addr, "", "dev/app:1", MustImage(t))
		if got := ggcrError(t, err); got.Status != http.StatusUnauthorized {
			t.Fatalf("anonymous push to dev: got %d %s, want 401", got.Status, got.Code)
		}
	})
}

// TestAccessOtherClients ensures oras-go and regclient work with
// credentials: oras pushes a tag a developer may write and is refused one it
// may not, and regclient is refused a push to prod with the rule named.
func TestAccessOtherClients(t *testing.T) {
	e := MustEnv(t, Separate, withIssueACL(mustHtpasswd(t, authUsers)))
	img := MustImage(t)
	if err := pushAs(t, e.Addr, "dev", "dev/tool:1", img); err != nil {
		t.Fatalf("dev pushes dev/tool:1: %v", err)
	}
	if err := pushAs(t, e.Addr, "admin", "prod/tool@"+MustDigest(t, img).String(), img); err != nil {
		t.Fatalf("admin pushes prod/tool by digest: %v", err)
	}
	mf := MustManifest(t, img)

	oras := func(user, repo string) error {
		r := orasRepo(t, e.Addr, repo)
		r.Client = &orasauth.Client{Credential: orasauth.StaticCredential(e.Addr,
			orasauth.Credential{Username: user, Password: authUsers[user]})}
		return r.Manifests().PushReference(t.Context(), mf.oci(), strings.NewReader(string(mf.Raw)), "2")
	}
	if err := oras("dev", "dev/tool"); err != nil {
		t.Fatalf("oras as dev tags dev/tool:2: %v", err)
	}
	wantAccessDenied(t, orasError(t, oras("release-bot", "prod/tool")), "release-bot", "push", "prod/tool:2", "access: no rule applies")

	rc := rcconfig.New(rcconfig.WithConfigHost(rchost.Host{Name: e.Addr, TLS: rchost.TLSDisabled, User: "reader", Pass: authUsers["reader"]}),
		rcconfig.WithRetryLimit(1))
	r, err := ref.New(e.Addr + "/prod/tool:v3")
	if err != nil {
		t.Fatal(err)
	}
	m, err := rc.ManifestGet(t.Context(), r.SetDigest(mf.Digest.String()))
	if err != nil {
		t.Fatalf("regclient as reader pulls prod/tool by digest: %v", err)
	}
	err = rc.ManifestPut(t.Context(), r, m)
	wantAccessDenied(t, regclientError(t, err), "reader", "push", "prod/tool:v3", "access[4]")
}

// listAs GETs a catalog or tag list as user and returns the entries.
func listAs(t *testing.T, e *Env, user, path, field string) []string {
	t.Helper()
	resp, body := do(t, http.MethodGet, e.URL(path), nil, basic(user))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s as %q: %d %s", path, user, resp.StatusCode, body)
	}
	var doc map[string]json.RawMessage
	var out []string
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatalf("GET %s: %v: %s", path, err, body)
	}
	if err := json.Unmarshal(doc[field], &out); err != nil {
		t.Fatalf("GET %s: %s: %v: %s", path, field, err, body)
	}
	slices.Sort(out)
	return out
}

// TestCatalogAndTagsFiltered ensures _catalog and tags/list show only what
// the caller may pull.
func TestCatalogAndTagsFiltered(t *testing.T) {
	forEachMode(t, func(t *testing.T, m Mode) {
		e := MustEnv(t, m, withIssueACL(mustHtpasswd(t, authUsers)))
		img := MustImage(t)
		for user, s := range map[string]string{"release-bot": "prod/app:v1", "admin": "prod/app:hotfix", "dev": "dev/app:1"} {
			if err := pushAs(t, e.Addr, user, s, img); err != nil {
				t.Fatalf("%s pushes %s: %v", user, s, err)
			}
		}
		if err := pushAs(t, e.Addr, "release-bot", "public/base:1", img); err != nil {
			t.Fatal(err)
		}
		tests := []struct {
			user, path, field string
			want              []string
		}{
			{"", "/v2/_catalog", "repositories", []string{"public/base"}},
			{"dev", "/v2/_catalog", "repositories", []string{"dev/app", "public/base"}},
			{"reader", "/v2/_catalog", "repositories", []string{"dev/app", "prod/app", "public/base"}},
			{"release-bot", "/v2/prod/app/tags/list", "tags", []string{"v1"}},
			{"reader", "/v2/prod/app/tags/list", "tags", []string{"hotfix", "v1"}},
		}
		for _, tc := range tests {
			if got := listAs(t, e, tc.user, tc.path, tc.field); !slices.Equal(got, tc.want) {
				t.Errorf("GET %s as %q lists %v, want %v", tc.path, tc.user, got, tc.want)
			}
		}
	})
}

// TestMountBypassRefused ensures a cross-repository mount from a repository
// the caller may not pull is not forwarded: the developer gets a plain
// upload session, and the secret layer does not appear in its repository.
func TestMountBypassRefused(t *testing.T) {
	forEachMode(t, func(t *testing.T, m Mode) {
		e := MustEnv(t, m, withIssueACL(mustHtpasswd(t, authUsers)))
		img := MustImage(t)
		if err := pushAs(t, e.Addr, "release-bot", "prod/secret:v1", img); err != nil {
			t.Fatal(err)
		}
		layer := mustLayers(t, img)[0]
		resp, body := do(t, http.MethodPost, e.URL("/v2/dev/steal/blobs/uploads/?mount="+layer.String()+"&from=prod/secret"), nil, basic("dev"))
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("mount from prod as dev: %d %s, want 202 (a plain upload session)", resp.StatusCode, body)
		}
		resp, _ = do(t, http.MethodHead, e.URL("/v2/dev/steal/blobs/"+layer.String()), nil, basic("dev"))
		if resp.StatusCode != http.StatusNotFound {
			t.Fatalf("HEAD of the secret layer in dev/steal: %d, want 404", resp.StatusCode)
		}
		// The same mount by someone who may pull prod is forwarded.
		resp, body = do(t, http.MethodPost, e.URL("/v2/dev/copy/blobs/uploads/?mount="+layer.String()+"&from=prod/secret"), nil, basic("admin"))
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("mount from prod as admin: %d %s, want 201", resp.StatusCode, body)
		}
	})
}
