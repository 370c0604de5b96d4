package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/rs/zerolog"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/proxy/authn"
	"github.com/taglock/taglock/storage/bolt"
)

// TestNeeds ensures each endpoint asks for the action the access rules
// decide on, on the parsed repository, and that a manifest PUT is decided
// on every tag it writes: the path's and each ?tag=.
func TestNeeds(t *testing.T) {
	t.Parallel()
	d := "sha256:" + fmt.Sprintf("%064x", 1)
	tests := []struct {
		method, uri string
		want        []need
	}{
		{http.MethodGet, "/v2/", nil},
		{http.MethodGet, "/v2/_catalog", nil},
		{http.MethodGet, "/v2/a/b/tags/list", []need{{policy.Pull, "a/b", ""}}},
		{http.MethodHead, "/v2/a/manifests/v1", []need{{policy.Pull, "a", "v1"}}},
		{http.MethodGet, "/v2/a/manifests/" + d, []need{{policy.Pull, "a", ""}}},
		{http.MethodGet, "/v2/a/blobs/" + d, []need{{policy.Pull, "a", ""}}},
		{http.MethodGet, "/v2/a/referrers/" + d, []need{{policy.Pull, "a", ""}}},
		{http.MethodPut, "/v2/a/manifests/v1", []need{{policy.Push, "a", "v1"}}},
		{http.MethodPut, "/v2/a/manifests/" + d, []need{{policy.Push, "a", ""}}},
		{http.MethodPut, "/v2/a/manifests/" + d + "?tag=v2&tag=latest", []need{{policy.Push, "a", "latest"}, {policy.Push, "a", "v2"}}},
		{http.MethodPut, "/v2/a/manifests/" + d + "?tag=v1&tag=v3&tag=v1", []need{{policy.Push, "a", "v1"}, {policy.Push, "a", "v3"}}},
		{http.MethodDelete, "/v2/a/manifests/v1", []need{{policy.Delete, "a", "v1"}}},
		{http.MethodDelete, "/v2/a/blobs/" + d, []need{{policy.Delete, "a", ""}}},
		{http.MethodPost, "/v2/a/blobs/uploads/?mount=" + d + "&from=b", []need{{policy.Push, "a", ""}}},
		{http.MethodPatch, "/v2/a/blobs/uploads/abc", []need{{policy.Push, "a", ""}}},
		{http.MethodGet, "/v2/a/blobs/uploads/abc", []need{{policy.Push, "a", ""}}},
	}
	for _, tc := range tests {
		rt, err := ParseRequest(tc.method, tc.uri)
		if err != nil {
			t.Fatalf("%s %s: %v", tc.method, tc.uri, err)
		}
		got := needs(rt)
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("%s %s: needs %v, want %v", tc.method, tc.uri, got, tc.want)
		}
	}
}

// fakeAuth takes the user from X-Test-User; "bad" is a wrong password.
type fakeAuth struct{}

func (fakeAuth) Authenticate(r *http.Request) (authn.Caller, error) {
	switch u := r.Header.Get("X-Test-User"); u {
	case "":
		return authn.Caller{}, nil
	case "bad":
		return authn.Caller{}, errors.New("invalid credentials")
	default:
		return authn.Caller{Identity: policy.Identity{User: u}}, nil
	}
}

func (fakeAuth) Challenge(scope string, insufficient bool) string {
	return fmt.Sprintf("Fake scope=%q insufficient=%v", scope, insufficient)
}

// recordingUpstream answers every request with a canned catalog and
// remembers what it received.
type recordingUpstream struct {
	mu   sync.Mutex
	uris []string
}

func (u *recordingUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	u.mu.Lock()
	u.uris = append(u.uris, r.Method+" "+r.URL.RequestURI())
	u.mu.Unlock()
	if r.URL.Path == "/v2/_catalog" {
		w.Header().Set("Link", `</v2/_catalog?last=prod%2Fb&n=2>; rel="next"`)
		_, _ = w.Write([]byte(`{"repositories":["dev/a","prod/b"]}`))
		return
	}
	w.WriteHeader(http.StatusAccepted)
}

func (u *recordingUpstream) received() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.uris)
}

// TestAuthorize ensures what the authorize step does around the rules: a
// refusal never reaches the upstream and writes one audit line; anonymous
// and wrong credentials get the authenticator's challenge with the scope;
// a mount the caller may not pull from is dropped from the forwarded URL;
// the catalog is filtered and keeps the upstream's Link.
func TestAuthorize(t *testing.T) {
	t.Parallel()
	up := &recordingUpstream{}
	var audit bytes.Buffer
	auditLog := zerolog.New(&audit)
	l, err := bolt.Open(filepath.Join(t.TempDir(), "ledger.db"), bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	srv := New(Options{Upstream: NewInProcess(up), Ledger: l, Audit: &auditLog, Auth: fakeAuth{}, Access: policy.Access{Rules: []policy.AccessRule{
		{Name: "access[0]", Subjects: []string{"dev"}, Repositories: policy.Globs{policy.MustGlob("dev/**")}, Actions: []policy.Action{policy.Pull, policy.Push}},
	}}})
	send := func(method, uri, user string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(method, uri, nil)
		if user != "" {
			r.Header.Set("X-Test-User", user)
		}
		w := httptest.NewRecorder()
		srv.ServeHTTP(w, r)
		return w
	}

	w := send(http.MethodPost, "/v2/prod/b/blobs/uploads/", "dev")
	if w.Code != http.StatusForbidden || !strings.Contains(w.Body.String(), `user \"dev\" may not push prod/b`) {
		t.Fatalf("dev uploads to prod: %d %s", w.Code, w.Body)
	}
	if got := up.received(); len(got) != 0 {
		t.Fatalf("the refused request reached the upstream: %v", got)
	}
	lines := strings.Split(strings.TrimSpace(audit.String()), "\n")
	if len(lines) != 1 || !strings.Contains(lines[0], `"event":"refused"`) || !strings.Contains(lines[0], `"user":"dev"`) ||
		!strings.Contains(lines[0], `"rule":"access: no rule applies"`) {
		t.Fatalf("audit lines for one refusal: %q", lines)
	}

	for _, user := range []string{"", "bad"} {
		w = send(http.MethodPut, "/v2/dev/a/manifests/v1", user)
		want := `Fake scope="repository:dev/a:pull,push" insufficient=false`
		if w.Code != http.StatusUnauthorized || w.Header().Get("WWW-Authenticate") != want {
			t.Fatalf("user %q: %d %q, want 401 %q", user, w.Code, w.Header().Get("WWW-Authenticate"), want)
		}
	}
	if got := up.received(); len(got) != 0 {
		t.Fatalf("challenged requests reached the upstream: %v", got)
	}

	d := "sha256:" + strings.Repeat("a", 64)
	w = send(http.MethodPost, "/v2/dev/a/blobs/uploads/?mount="+d+"&from=prod/b", "dev")
	if got := up.received(); w.Code != http.StatusAccepted || len(got) != 1 || got[0] != "POST /v2/dev/a/blobs/uploads/" {
		t.Fatalf("mount from prod as dev: %d, upstream got %v; want a plain upload start", w.Code, got)
	}

	w = send(http.MethodGet, "/v2/_catalog?n=2", "dev")
	if w.Code != http.StatusOK || strings.TrimSpace(w.Body.String()) != `{"repositories":["dev/a"]}` ||
		w.Header().Get("Link") != `</v2/_catalog?last=prod%2Fb&n=2>; rel="next"` {
		t.Fatalf("catalog as dev: %d %s Link %q", w.Code, w.Body, w.Header().Get("Link"))
	}
}
