package server

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"

	"github.com/taglock/taglock/internal/admin"
	"github.com/taglock/taglock/internal/config"
	"github.com/taglock/taglock/internal/web"
	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/storage"
	"github.com/taglock/taglock/storage/bolt"
)

// gated is the ledger API and web page behind ledgerGate, as serve mounts
// them on its TCP listener, over a ledger with team/app (1.0 and a refusal of it, latest) and
// secret/db (1.0 and a refusal of it). With auth on, alice may pull team/**
// except the tag latest, bob may pull nothing.
func gated(t *testing.T, authOn bool) (http.Handler, *syncBuffer) {
	t.Helper()
	l, err := bolt.Open(filepath.Join(t.TempDir(), "ledger.db"), bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	at := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	var bs []storage.Binding
	var ev []storage.Event
	for _, ref := range []string{"team/app:1.0", "team/app:latest", "secret/db:1.0"} {
		repo, tag, _ := strings.Cut(ref, ":")
		d := digest.FromString(ref)
		bs = append(bs, storage.Binding{Repo: repo, Tag: tag, Digest: d, Mode: policy.Immutable, PushedAt: at, PushedBy: "ci"})
		if tag == "1.0" {
			ev = append(ev, storage.Event{Kind: storage.EventRefused, Repo: repo, Tag: tag, Digest: digest.FromString("x" + ref),
				Previous: d, User: "mallory", Reason: "immutable-tag-moved"})
		}
	}
	if err := l.Put(context.Background(), bs, ev); err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	if authOn {
		var pw strings.Builder
		for _, u := range []string{"alice", "bob"} {
			h, err := bcrypt.GenerateFromPassword([]byte(u+"-pw"), bcrypt.MinCost)
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&pw, "%s:%s\n", u, h)
		}
		path := filepath.Join(t.TempDir(), "htpasswd")
		if err := os.WriteFile(path, []byte(pw.String()), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg.Auth = config.Auth{Mode: "htpasswd", Htpasswd: config.HtpasswdAuth{Path: path}}
		cfg.Access = []config.AccessRule{
			{Subjects: []string{"user:alice"}, Repositories: []string{"team/**"}, Tags: []string{"1.*"}, Actions: []string{"pull"}},
			{Subjects: []string{"authenticated"}, Repositories: []string{"dev/**"}, Actions: []string{"pull", "push"}},
		}
	}
	authn, access, err := clientAuth(cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	audit := &syncBuffer{}
	log := zerolog.New(audit)
	mux := http.NewServeMux()
	ledgerRoutes(mux, ledgerGate(authn, access, &log), web.New(web.Options{Ledger: l, Viewer: viewer}),
		admin.New(admin.Options{Ledger: l, Viewer: viewer}))
	return mux, audit
}

// call sends one request from peer, as user (no credentials when "").
func call(h http.Handler, method, path, peer, user string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, path, nil)
	r.RemoteAddr = peer
	if user != "" {
		r.SetBasicAuth(user, user+"-pw")
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

const (
	remotePeer = "192.0.2.7:40000" // TEST-NET-1: never dialled, only a RemoteAddr
	localPeer  = "127.0.0.1:40000"
)

func repositories(t *testing.T, w *httptest.ResponseRecorder) []string {
	t.Helper()
	var body admin.RepositoriesResponse
	if w.Code != http.StatusOK {
		t.Fatalf("repositories: %d %s", w.Code, w.Body)
	}
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
		t.Fatal(err)
	}
	return body.Repositories
}

// With authentication on, a caller must authenticate: no credentials or a wrong password is 401 with the registry's challenge, an
// audit line, and nothing of the ledger.
func TestLedgerGateChallengesRemoteCallers(t *testing.T) {
	t.Parallel()
	h, audit := gated(t, true)
	for _, path := range []string{"/taglock/v1/repositories", "/taglock/"} {
		for _, creds := range []func(*http.Request){
			func(*http.Request) {},
			func(r *http.Request) { r.SetBasicAuth("alice", "wrong") },
		} {
			r := httptest.NewRequest(http.MethodGet, path, nil)
			r.RemoteAddr = remotePeer
			creds(r)
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			if w.Code != http.StatusUnauthorized || !strings.HasPrefix(w.Header().Get("WWW-Authenticate"), "Basic ") {
				t.Errorf("GET %s: %d, challenge %q; want 401 with a Basic challenge", path, w.Code, w.Header().Get("WWW-Authenticate"))
			}
			if strings.Contains(w.Body.String(), "team/app") {
				t.Errorf("GET %s unauthenticated showed the ledger: %s", path, w.Body)
			}
		}
	}
	if !strings.Contains(audit.String(), `"reason":"unauthenticated"`) || !strings.Contains(audit.String(), `"need":"ledger"`) {
		t.Errorf("no audit line for the refusals:\n%s", audit)
	}
}

// An authenticated caller sees what it may pull, and
// asking for anything else by name is 404, as if it were not there.
func TestLedgerGateShowsWhatTheCallerMayPull(t *testing.T) {
	t.Parallel()
	h, _ := gated(t, true)
	if got := repositories(t, call(h, "GET", "/taglock/v1/repositories", remotePeer, "alice")); !slices.Equal(got, []string{"team/app"}) {
		t.Errorf("alice's repositories: %v, want [team/app]", got)
	}
	if got := repositories(t, call(h, "GET", "/taglock/v1/repositories", remotePeer, "bob")); len(got) != 0 {
		t.Errorf("bob's repositories: %v, want none", got)
	}
	tags := call(h, "GET", "/taglock/v1/repositories/team/app/tags", remotePeer, "alice")
	if tags.Code != http.StatusOK || !strings.Contains(tags.Body.String(), `"tag":"1.0"`) || strings.Contains(tags.Body.String(), `"latest"`) {
		t.Errorf("alice's team/app tags: %d %s; want 1.0 and not latest", tags.Code, tags.Body)
	}
	refusals := call(h, "GET", "/taglock/v1/refusals", remotePeer, "alice").Body.String()
	if !strings.Contains(refusals, "team/app") || strings.Contains(refusals, "secret/db") {
		t.Errorf("alice's refusals: %s; want team/app's only", refusals)
	}
	for _, path := range []string{
		"/taglock/v1/repositories/secret/db/tags",
		"/taglock/v1/bindings/secret/db:1.0",
		"/taglock/v1/bindings/team/app:latest",
		"/taglock/v1/history?repo=secret/db",
		"/taglock/v1/history?repo=team/app&tag=latest",
		"/taglock/repos/secret/db",
		"/taglock/repos/secret/db:1.0",
		"/taglock/repos/team/app:latest",
	} {
		if w := call(h, "GET", path, remotePeer, "alice"); w.Code != http.StatusNotFound {
			t.Errorf("alice GET %s: %d, want 404", path, w.Code)
		}
	}
	page := call(h, "GET", "/taglock/", remotePeer, "alice")
	if page.Code != http.StatusOK || !strings.Contains(page.Body.String(), "team/app") || strings.Contains(page.Body.String(), "secret/db") {
		t.Errorf("alice's front page: %d; want team/app and not secret/db:\n%s", page.Code, page.Body)
	}
	// There are no admin calls on the TCP listener, whoever asks.
	if w := call(h, "POST", "/taglock/v1/admin/ledger/check", remotePeer, "alice"); w.Code != http.StatusNotFound {
		t.Errorf("alice POST admin/ledger/check: %d, want 404", w.Code)
	}
}

// With authentication on, the peer's address grants nothing: a caller on
// loopback, or one claiming another address in forwarding headers, is
// challenged on the read API and the web page like any other, and an
// admin call is 404 before credentials are asked for. With authentication
// off everyone sees everything, as before.
func TestLedgerGateIgnoresPeerAddress(t *testing.T) {
	t.Parallel()
	on, _ := gated(t, true)
	for _, peer := range []string{localPeer, "[::1]:40000"} {
		for _, path := range []string{"/taglock/v1/repositories", "/taglock/v1/bindings/team/app:1.0", "/taglock/"} {
			r := httptest.NewRequest(http.MethodGet, path, nil)
			r.RemoteAddr = peer
			r.Header.Set("X-Forwarded-For", "127.0.0.1")
			r.Header.Set("X-Real-Ip", "127.0.0.1")
			w := httptest.NewRecorder()
			on.ServeHTTP(w, r)
			if w.Code != http.StatusUnauthorized || w.Header().Get("WWW-Authenticate") == "" || strings.Contains(w.Body.String(), "team/app") {
				t.Errorf("GET %s from %s without credentials: %d, challenge %q; want 401 with a challenge and nothing of the ledger",
					path, peer, w.Code, w.Header().Get("WWW-Authenticate"))
			}
		}
		if w := call(on, "POST", "/taglock/v1/admin/ledger/check", peer, ""); w.Code != http.StatusNotFound {
			t.Errorf("POST admin/ledger/check from %s: %d, want 404", peer, w.Code)
		}
	}
	if got := repositories(t, call(on, "GET", "/taglock/v1/repositories", localPeer, "alice")); !slices.Equal(got, []string{"team/app"}) {
		t.Errorf("alice on loopback: repositories %v, want only what she may pull", got)
	}
	off, _ := gated(t, false)
	for _, peer := range []string{localPeer, remotePeer} {
		if got := repositories(t, call(off, "GET", "/taglock/v1/repositories", peer, "")); !slices.Equal(got, []string{"secret/db", "team/app"}) {
			t.Errorf("auth off, %s: repositories %v, want both", peer, got)
		}
	}
}

// A bearer token's scope narrows the view as it narrows the catalog: a token
// for the catalog leaves it to the access rules, a token for one
// repository shows that repository only, and the access rules still apply
// inside the token's scope.
func TestCallerViewHonoursTokenScope(t *testing.T) {
	t.Parallel()
	cfg := config.Default()
	cfg.Auth.Mode = "token"
	cfg.Access = []config.AccessRule{{Subjects: []string{"user:carol"}, Repositories: []string{"team/**"}, Actions: []string{"pull"}}}
	access, err := cfg.AccessPolicy()
	if err != nil {
		t.Fatal(err)
	}
	id := policy.Identity{User: "carol"}
	catalog := func(repo string, a policy.Action) bool { return repo == "" && a == policy.Pull }
	oneRepo := func(repo string, a policy.Action) bool { return repo == "team/app" && a == policy.Pull }
	tests := []struct {
		name  string
		scope func(string, policy.Action) bool
		repo  string
		want  bool
	}{
		{"no token scope", nil, "team/web", true},
		{"catalog token", catalog, "team/web", true},
		{"catalog token, repository the rules deny", catalog, "secret/db", false},
		{"repository token, that repository", oneRepo, "team/app", true},
		{"repository token, another repository", oneRepo, "team/web", false},
	}
	for _, tc := range tests {
		v := callerView{id: id, scope: tc.scope, access: access}
		if got := v.Repo(tc.repo); got != tc.want {
			t.Errorf("%s: Repo(%s) = %v, want %v", tc.name, tc.repo, got, tc.want)
		}
		if got := v.Tag(tc.repo, "1.0"); got != tc.want {
			t.Errorf("%s: Tag(%s, 1.0) = %v, want %v", tc.name, tc.repo, got, tc.want)
		}
	}
}
