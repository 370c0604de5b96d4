package auth

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// writeHtpasswd writes user:bcrypt(password) lines to path.
func writeHtpasswd(t *testing.T, path string, users ...string) {
	t.Helper()
	var b []byte
	for i := 0; i+1 < len(users); i += 2 {
		h, err := bcrypt.GenerateFromPassword([]byte(users[i+1]), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		b = fmt.Appendf(b, "%s:%s\n", users[i], h)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func basicRequest(user, password string) *http.Request {
	r, _ := http.NewRequest(http.MethodGet, "/v2/", nil)
	if user != "" {
		r.SetBasicAuth(user, password)
	}
	return r
}

// TestHtpasswdAuthenticate ensures good credentials yield the user and its
// groups, no credentials yield anonymous, and anything else is refused.
func TestHtpasswdAuthenticate(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "htpasswd")
	writeHtpasswd(t, path, "alice", "a-pass", "bob", "b-pass")
	h, err := NewHtpasswd(path, "", map[string][]string{"releasers": {"alice"}, "ops": {"alice", "carol"}})
	if err != nil {
		t.Fatal(err)
	}
	bearer := basicRequest("", "")
	bearer.Header.Set("Authorization", "Bearer x.eyJzdWIiOiJhbGljZSJ9.y")
	tests := []struct {
		name       string
		req        *http.Request
		wantUser   string
		wantGroups []string
		wantErr    bool
	}{
		{"good password", basicRequest("alice", "a-pass"), "alice", []string{"ops", "releasers"}, false},
		{"good password, again from the cache", basicRequest("alice", "a-pass"), "alice", []string{"ops", "releasers"}, false},
		{"user without groups", basicRequest("bob", "b-pass"), "bob", nil, false},
		{"wrong password", basicRequest("alice", "b-pass"), "", nil, true},
		{"unknown user", basicRequest("carol", "x"), "", nil, true},
		{"no credentials", basicRequest("", ""), "", nil, false},
		{"a bearer token claiming a user", bearer, "", nil, true},
	}
	for _, tc := range tests {
		c, err := h.Authenticate(tc.req)
		if (err != nil) != tc.wantErr || c.Identity.User != tc.wantUser || !slices.Equal(c.Identity.Groups, tc.wantGroups) {
			t.Errorf("%s: got %+v, %v; want user %q groups %v error %v", tc.name, c.Identity, err, tc.wantUser, tc.wantGroups, tc.wantErr)
		}
		if err != nil && !errors.Is(err, ErrBadCredentials) {
			t.Errorf("%s: error %v does not wrap ErrBadCredentials", tc.name, err)
		}
	}
	if got := h.Challenge("repository:x:pull", false); got != `Basic realm="taglock"` {
		t.Errorf("Challenge = %q", got)
	}
}

// TestHtpasswdReloads ensures a changed file is read again without a
// restart: a changed password stops working and a new user starts working.
func TestHtpasswdReloads(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "htpasswd")
	writeHtpasswd(t, path, "alice", "old")
	h, err := NewHtpasswd(path, "r", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.Authenticate(basicRequest("alice", "old")); err != nil {
		t.Fatalf("old password before the change: %v", err)
	}
	writeHtpasswd(t, path, "alice", "new", "dave", "d")
	// Make sure the modification time differs even on coarse clocks.
	future := time.Now().Add(2 * time.Second)
	if err := os.Chtimes(path, future, future); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Authenticate(basicRequest("alice", "old")); !errors.Is(err, ErrBadCredentials) {
		t.Errorf("old password after the change: %v, want ErrBadCredentials", err)
	}
	for _, up := range [][2]string{{"alice", "new"}, {"dave", "d"}} {
		if c, err := h.Authenticate(basicRequest(up[0], up[1])); err != nil || c.Identity.User != up[0] {
			t.Errorf("%s after the change: %+v, %v", up[0], c, err)
		}
	}
}

// TestHtpasswdRefusesBadFiles ensures a missing file or one with a
// non-bcrypt hash is an error at start, never an empty user list.
func TestHtpasswdRefusesBadFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if _, err := NewHtpasswd(filepath.Join(dir, "missing"), "", nil); !errors.Is(err, ErrHtpasswd) {
		t.Errorf("missing file: %v, want ErrHtpasswd", err)
	}
	md5 := filepath.Join(dir, "md5")
	if err := os.WriteFile(md5, []byte("alice:$apr1$abc$def\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := NewHtpasswd(md5, "", nil); !errors.Is(err, ErrHtpasswd) {
		t.Errorf("md5 hash: %v, want ErrHtpasswd", err)
	}
}
