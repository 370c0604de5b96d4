package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	digest "github.com/opencontainers/go-digest"
	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"

	"github.com/taglock/taglock/internal/admin"
	"github.com/taglock/taglock/internal/config"
	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/storage"
)

// socketClient is an HTTP client whose every connection goes to the Unix
// socket at path.
func socketClient(path string) *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", path)
	}}}
}

// forgedImport is a ledger export line rebinding repo:tag to another
// digest, mutable, as the attacker sent it.
func forgedImport(repo, tag string) (string, digest.Digest) {
	d := digest.FromString("forged " + repo + ":" + tag)
	return fmt.Sprintf(`{"type":"binding","repo":%q,"tag":%q,"digest":%q,"size":1,"mode":"mutable","pushedAt":"2026-01-01T00:00:00Z","pushedBy":"mallory"}`+"\n",
		repo, tag, d), d
}

// TestAdminCallsOverTCPAre404 is the reported attack: a loopback caller
// POSTs a forged binding to the ledger import with the old admin header,
// a forwarded-for address, or a foreign Host and Origin (DNS rebinding from
// a browser on the server's host). Every such call over the TCP listener is
// 404, whatever its spelling, and the immutable tag keeps its digest, so a
// push of the forged digest is still refused.
func TestAdminCallsOverTCPAre404(t *testing.T) {
	t.Parallel()
	srv, base := mustStart(t, nil)
	code, d := push(t, base, "team/app", "1.0", "one")
	if code != http.StatusCreated {
		t.Fatalf("push: %d", code)
	}
	line, forged := forgedImport("team/app", "1.0")
	headers := []struct {
		name string
		set  func(*http.Request)
	}{
		{"no headers", func(*http.Request) {}},
		{"admin header", func(r *http.Request) { r.Header.Set("X-Taglock-Admin", "1") }},
		{"forwarded for", func(r *http.Request) {
			r.Header.Set("X-Taglock-Admin", "1")
			r.Header.Set("X-Forwarded-For", "203.0.113.9")
		}},
		{"foreign host and origin", func(r *http.Request) {
			r.Header.Set("X-Taglock-Admin", "1")
			r.Host = "rebind.example:80"
			r.Header.Set("Origin", "http://rebind.example")
		}},
	}
	// Other spellings of the path are redirected to the clean one (which
	// the client follows, POST and all) or refused as a registry path.
	paths := []struct {
		path string
		want int
	}{
		{"/taglock/v1/admin/ledger/import?force=true", http.StatusNotFound},
		{"/taglock/v1/admin/ledger/import", http.StatusNotFound},
		{"/taglock/v1/admin/import", http.StatusNotFound},
		{"/taglock/v1/admin/verify", http.StatusNotFound},
		{"/taglock/v1/admin/retention/apply", http.StatusNotFound},
		{"/taglock/v1/admin/ledger/backup", http.StatusNotFound},
		{"/taglock/v1//admin/ledger/import", http.StatusNotFound},
		{"/taglock/v1/x/../admin/ledger/import", http.StatusNotFound},
		{"/taglock/v1/admin%2Fledger%2Fimport", http.StatusBadRequest},
	}
	for _, h := range headers {
		for _, p := range paths {
			req, err := http.NewRequest(http.MethodPost, base+p.path, strings.NewReader(line))
			if err != nil {
				t.Fatal(err)
			}
			h.set(req)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != p.want {
				t.Errorf("%s: POST %s over TCP: %d %s, want %d", h.name, p.path, resp.StatusCode, body, p.want)
			}
		}
	}
	if b, err := srv.Ledger().Binding(context.Background(), "team/app", "1.0"); err != nil || b.Digest != d || b.Mode != policy.Immutable {
		t.Fatalf("binding after the attack = %s %s, %v; want %s immutable", b.Digest, b.Mode, err, d)
	}
	if forged == d {
		t.Fatal("the forged digest is the real one")
	}
	if code, _ := push(t, base, "team/app", "1.0", "evil"); code != http.StatusForbidden {
		t.Errorf("moving push after the attack: %d, want 403", code)
	}
}

// TestAdminSocket ensures serve makes the admin socket in the data
// directory, mode 0600, answers the admin API and the whole ledger on it,
// and removes it on shutdown; with admin.group (here the user's primary
// group, by name) the socket is mode 0660 and belongs to that group.
func TestAdminSocket(t *testing.T) {
	t.Parallel()
	grp, err := user.LookupGroupId(strconv.Itoa(os.Getgid()))
	if err != nil {
		t.Fatalf("the test needs the name of this user's primary group: %v", err)
	}
	for _, tc := range []struct {
		name  string
		group string
		mode  fs.FileMode
	}{
		{"default", "", 0o600},
		{"group", grp.Name, 0o660},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv, base := startOnly(t, func(c *config.Config) { c.Admin.Group = tc.group })
			sock := srv.AdminSocket()
			if want := filepath.Join(srv.cfg.Data, "taglock.sock"); sock != want {
				t.Errorf("socket at %s, want %s", sock, want)
			}
			fi, err := os.Lstat(sock)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != tc.mode {
				t.Errorf("socket mode %s, want a socket with %s", fi.Mode(), tc.mode)
			}
			if gid := fi.Sys().(*syscall.Stat_t).Gid; tc.group != "" && int(gid) != os.Getgid() {
				t.Errorf("socket group %d, want %d", gid, os.Getgid())
			}
			if leftovers, _ := filepath.Glob(filepath.Join(filepath.Dir(sock), ".s*")); len(leftovers) != 0 {
				t.Errorf("binding the socket left %v behind", leftovers)
			}
			if code, _ := push(t, base, "team/app", "1.0", "one"); code != http.StatusCreated {
				t.Fatalf("push: %d", code)
			}
			c := admin.NewClient(sock)
			if problems, err := c.Check(context.Background()); err != nil || len(problems) != 0 {
				t.Errorf("check on the socket = %v, %v", problems, err)
			}
			if b, err := c.Binding(context.Background(), "team/app", "1.0"); err != nil || b.Tag != "1.0" {
				t.Errorf("binding on the socket = %+v, %v", b, err)
			}
			if err := srv.Shutdown(context.Background()); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Lstat(sock); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("socket after shutdown: %v, want it removed", err)
			}
		})
	}
}

// TestStaleAdminSocket ensures a socket nothing answers on (left by a serve
// that was killed) is replaced at start, and a missing directory created,
// while a socket something answers on and a file that is not a socket stop
// the start and are left alone.
func TestStaleAdminSocket(t *testing.T) {
	t.Parallel()
	start := func(t *testing.T, sock string) (*Server, error) {
		cfg := config.Default()
		cfg.Listen, cfg.Data, cfg.Admin.Socket = "127.0.0.1:0", filepath.Join(t.TempDir(), "data"), sock
		if errs := cfg.Validate(); len(errs) > 0 {
			t.Fatal(errs)
		}
		return Start(context.Background(), cfg, zerolog.Nop())
	}
	t.Run("stale", func(t *testing.T) {
		t.Parallel()
		sock := filepath.Join(t.TempDir(), "a.sock")
		ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		ln.SetUnlinkOnClose(false)
		_ = ln.Close()
		srv, err := start(t, sock)
		if err != nil {
			t.Fatalf("start over a stale socket: %v", err)
		}
		defer srv.Shutdown(context.Background())
		if _, err := admin.NewClient(sock).Check(context.Background()); err != nil {
			t.Errorf("check on the replaced socket: %v", err)
		}
	})
	t.Run("missing directory", func(t *testing.T) {
		t.Parallel()
		sock := filepath.Join(t.TempDir(), "run", "a.sock")
		srv, err := start(t, sock)
		if err != nil {
			t.Fatalf("start with admin.socket in a directory that does not exist yet: %v", err)
		}
		defer srv.Shutdown(context.Background())
		if _, err := admin.NewClient(sock).Check(context.Background()); err != nil {
			t.Errorf("check on the socket: %v", err)
		}
	})
	t.Run("live", func(t *testing.T) {
		t.Parallel()
		sock := filepath.Join(t.TempDir(), "a.sock")
		ln, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() { _ = http.Serve(ln, http.NotFoundHandler()) }()
		if srv, err := start(t, sock); err == nil || !strings.Contains(err.Error(), "another process answers") {
			if srv != nil {
				_ = srv.Shutdown(context.Background())
			}
			t.Fatalf("start over a live socket: %v, want a refusal", err)
		}
		if resp, err := socketClient(sock).Get("http://x/"); err != nil {
			t.Errorf("the live socket stopped answering: %v", err)
		} else {
			resp.Body.Close()
		}
	})
	t.Run("not a socket", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "a.sock")
		if err := os.WriteFile(path, []byte("keep me"), 0o600); err != nil {
			t.Fatal(err)
		}
		if srv, err := start(t, path); err == nil || !strings.Contains(err.Error(), "not a socket") {
			if srv != nil {
				_ = srv.Shutdown(context.Background())
			}
			t.Fatalf("start over a regular file: %v, want a refusal", err)
		}
		if b, err := os.ReadFile(path); err != nil || string(b) != "keep me" {
			t.Errorf("the file in the way was changed: %q, %v", b, err)
		}
	})
}

// TestLedgerReadsNeedAuthOnTCP ensures that with authentication on a
// caller on loopback without credentials is challenged on the read API and
// the web page, while the admin socket shows the whole ledger, so the
// commands keep working.
func TestLedgerReadsNeedAuthOnTCP(t *testing.T) {
	t.Parallel()
	hash, err := bcrypt.GenerateFromPassword([]byte("ci-pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	htpasswd := filepath.Join(t.TempDir(), "htpasswd")
	if err := os.WriteFile(htpasswd, []byte("ci:"+string(hash)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv, base := mustStart(t, func(c *config.Config) {
		c.Auth = config.Auth{Mode: "htpasswd", Htpasswd: config.HtpasswdAuth{Path: htpasswd}}
		c.Access = []config.AccessRule{{Subjects: []string{"user:ci"}, Repositories: []string{"team/**"}, Actions: []string{"pull", "push"}}}
	})
	if err := srv.Ledger().Put(context.Background(), []storage.Binding{{Repo: "team/app", Tag: "1.0", Digest: digest.FromString("x"),
		Mode: policy.Immutable, PushedBy: "ci"}}, nil); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/taglock/v1/repositories", "/taglock/v1/bindings/team/app:1.0", "/taglock/", "/taglock/repos/team/app"} {
		resp, body := do(t, http.MethodGet, base+path, "", nil)
		if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") == "" || bytes.Contains(body, []byte("team/app")) {
			t.Errorf("GET %s on loopback without credentials: %d, challenge %q; want 401 with a challenge", path, resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
		}
	}
	for _, path := range []string{"/taglock/v1/repositories", "/taglock/"} {
		resp, err := socketClient(srv.AdminSocket()).Get("http://taglock" + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte("team/app")) {
			t.Errorf("GET %s on the admin socket: %d %s; want the ledger", path, resp.StatusCode, body)
		}
	}
}
