package auth

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestPasswordFileRereads ensures a changed password file is read again,
// surrounding whitespace is trimmed, and a missing or empty file is an
// error rather than an empty password.
func TestPasswordFileRereads(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(path, []byte("one\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &PasswordFile{User: "AWS", Path: path}
	if u, pw, err := p.Credentials(t.Context(), false); err != nil || u != "AWS" || pw != "one" {
		t.Fatalf("first read: %q %q %v", u, pw, err)
	}
	if err := os.WriteFile(path, []byte("  two-longer\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, pw, err := p.Credentials(t.Context(), false); err != nil || pw != "two-longer" {
		t.Fatalf("after the change: %q %v", pw, err)
	}
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := p.Credentials(t.Context(), true); !errors.Is(err, ErrNoPassword) {
		t.Fatalf("empty file: %v, want ErrNoPassword", err)
	}
	if _, _, err := (&PasswordFile{Path: path + ".missing"}).Credentials(t.Context(), false); !errors.Is(err, ErrNoPassword) {
		t.Fatalf("missing file: %v, want ErrNoPassword", err)
	}
}

// TestCredentialHelper ensures the Docker credential helper protocol is
// spoken (server on stdin, {Username, Secret} on stdout), its answer is
// reused until it expires, and a failing helper is an error.
func TestCredentialHelper(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	count := filepath.Join(dir, "count")
	helper := filepath.Join(dir, "docker-credential-test")
	script := "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nread server\necho x >> " + count +
		"\nprintf '{\"ServerURL\":\"%s\",\"Username\":\"AWS\",\"Secret\":\"s3cret-for-%s\"}' \"$server\" \"$server\"\n"
	if err := os.WriteFile(helper, []byte(script), 0o700); err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_700_000_000, 0)
	h := &CredentialHelper{Program: helper, Server: "registry.example", Now: func() time.Time { return now }}
	for range 2 {
		u, pw, err := h.Credentials(t.Context(), false)
		if err != nil || u != "AWS" || pw != "s3cret-for-registry.example" {
			t.Fatalf("helper: %q %q %v", u, pw, err)
		}
	}
	now = now.Add(helperTTL + time.Second)
	if _, _, err := h.Credentials(t.Context(), false); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(count)
	if n := strings.Count(string(b), "x"); n != 2 {
		t.Fatalf("helper ran %d times; want 2 (once, then again after expiry)", n)
	}
	bad := &CredentialHelper{Program: filepath.Join(dir, "missing-helper"), Server: "x"}
	if _, _, err := bad.Credentials(t.Context(), false); !errors.Is(err, ErrNoPassword) {
		t.Fatalf("missing helper: %v, want ErrNoPassword", err)
	}
}

// rotating is a Secret whose password changes when forced.
type rotating struct{ n atomic.Int32 }

func (r *rotating) Credentials(_ context.Context, force bool) (string, string, error) {
	if force {
		r.n.Add(1)
	}
	if r.n.Load() == 0 {
		return "svc", "old", nil
	}
	return "svc", "new", nil
}

// TestBasicReplacesClientCredentials ensures the client's Authorization is
// never forwarded, the service account's is, and a 401 makes the secret be
// read again and a replayable request be retried once.
func TestBasicReplacesClientCredentials(t *testing.T) {
	t.Parallel()
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, pw, _ := r.BasicAuth()
		if u != "svc" || pw != "new" {
			w.Header().Set("WWW-Authenticate", `Basic realm="up"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	defer up.Close()
	secret := &rotating{}
	client := &http.Client{Transport: NewBasic(secret, http.DefaultTransport)}
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPut, up.URL+"/v2/x/manifests/v1", strings.NewReader("{}"))
	req.SetBasicAuth("client", "client-password")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || secret.n.Load() != 1 {
		t.Fatalf("status %d after %d forced reads; want 200 after one", resp.StatusCode, secret.n.Load())
	}
	if u, _, _ := req.BasicAuth(); u != "client" {
		t.Fatalf("the caller's request was modified: user %q", u)
	}
}
