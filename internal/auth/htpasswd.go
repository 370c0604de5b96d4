package auth

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/proxy/authn"
)

// Sentinel errors.
var (
	// ErrBadCredentials is returned, wrapped, for credentials that do not
	// verify: an unknown user, a wrong password or a malformed header.
	ErrBadCredentials = errors.New("invalid credentials")
	// ErrHtpasswd is returned, wrapped, for an htpasswd file that cannot
	// be read or parsed.
	ErrHtpasswd = errors.New("htpasswd file unusable")
)

// dummyHash is compared against for unknown users, so a miss costs as much
// as a wrong password.
var dummyHash = []byte("$2y$10$4OWQfz3rSGmR3uTCLdQQ/eyZo.5klO2Nv2lB97MPTnKbm2bQPlTVq")

// Htpasswd authenticates Basic credentials against a bcrypt htpasswd file.
// The file is read again whenever its size or modification time changes,
// so users can be added and passwords changed without a restart.
type Htpasswd struct {
	path   string
	realm  string
	groups map[string][]string // user -> groups

	mu      sync.Mutex
	mtime   time.Time
	size    int64
	entries map[string][]byte
	// verified remembers sha256(user:password) of credentials bcrypt
	// accepted since the file was last read; bcrypt costs tens of
	// milliseconds and a push makes dozens of requests.
	verified map[[32]byte]bool
}

// NewHtpasswd returns an Htpasswd for the file at path. groups maps group
// names to their members, as auth.groups in the configuration does. The
// file must exist and parse; unlike Distribution's, a missing file is an
// error, never a freshly generated account.
func NewHtpasswd(path, realm string, groups map[string][]string) (*Htpasswd, error) {
	if realm == "" {
		realm = "taglock"
	}
	h := &Htpasswd{path: path, realm: realm, groups: map[string][]string{}}
	for g, users := range groups {
		for _, u := range users {
			h.groups[u] = append(h.groups[u], g)
		}
	}
	for _, gs := range h.groups {
		slices.Sort(gs)
	}
	if _, err := h.load(); err != nil {
		return nil, err
	}
	return h, nil
}

var _ authn.Authenticator = (*Htpasswd)(nil)

// load returns the current entries, reading the file again if it changed.
func (h *Htpasswd) load() (map[string][]byte, error) {
	fi, err := os.Stat(h.path)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrHtpasswd, err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.entries != nil && fi.ModTime().Equal(h.mtime) && fi.Size() == h.size {
		return h.entries, nil
	}
	b, err := os.ReadFile(h.path)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrHtpasswd, err)
	}
	entries, err := parseHtpasswd(b)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrHtpasswd, h.path, err)
	}
	h.entries, h.mtime, h.size = entries, fi.ModTime(), fi.Size()
	h.verified = map[[32]byte]bool{}
	return entries, nil
}

// parseHtpasswd reads "user:bcrypt-hash" lines; blank lines and lines
// starting with # are skipped. Only bcrypt hashes are accepted.
func parseHtpasswd(b []byte) (map[string][]byte, error) {
	entries := map[string][]byte{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		user, hash, ok := strings.Cut(line, ":")
		if !ok || user == "" {
			return nil, fmt.Errorf("line %d: want user:hash", n)
		}
		if _, err := bcrypt.Cost([]byte(hash)); err != nil {
			return nil, fmt.Errorf("line %d: user %q: only bcrypt hashes are supported (htpasswd -B)", n, user)
		}
		entries[user] = []byte(hash)
	}
	return entries, sc.Err()
}

// Authenticate implements authn.Authenticator.
func (h *Htpasswd) Authenticate(r *http.Request) (authn.Caller, error) {
	authz := r.Header.Get("Authorization")
	if authz == "" {
		return authn.Caller{}, nil
	}
	user, password, ok := r.BasicAuth()
	if !ok || user == "" {
		return authn.Caller{}, fmt.Errorf("%w: want Basic credentials", ErrBadCredentials)
	}
	entries, err := h.load()
	if err != nil {
		return authn.Caller{}, err
	}
	key := sha256.Sum256([]byte(user + "\x00" + password))
	h.mu.Lock()
	known := h.verified[key]
	h.mu.Unlock()
	if !known {
		hash, found := entries[user]
		if !found {
			_ = bcrypt.CompareHashAndPassword(dummyHash, []byte(password))
			return authn.Caller{}, fmt.Errorf("%w: user %q", ErrBadCredentials, user)
		}
		if err := bcrypt.CompareHashAndPassword(hash, []byte(password)); err != nil {
			return authn.Caller{}, fmt.Errorf("%w: user %q", ErrBadCredentials, user)
		}
		h.mu.Lock()
		if subtle.ConstantTimeCompare(h.entries[user], hash) == 1 {
			h.verified[key] = true
		}
		h.mu.Unlock()
	}
	return authn.Caller{Identity: policy.Identity{User: user, Groups: h.groups[user]}}, nil
}

// Challenge implements authn.Authenticator: a Basic challenge for the realm.
func (h *Htpasswd) Challenge(string, bool) string {
	return fmt.Sprintf("Basic realm=%q", h.realm)
}
