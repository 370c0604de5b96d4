package server

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/taglock/taglock/internal/admin"
)

// adminSocket is the Unix socket serve answers the admin API on. Its file
// permissions are the only authority over admin calls: mode 0600, or 0660
// with admin.group's group.
type adminSocket struct {
	path string
	file os.FileInfo // the socket as bound, so shutdown removes only ours
	ln   *net.UnixListener
	http *http.Server
}

// listenAdmin binds the admin socket at path. A socket already there is
// replaced only when nothing answers on it; anything else in the way is an
// error. The socket is bound in a new private directory next to path, given
// its mode and group, then renamed into place, so no one can connect before
// its permissions are set.
func listenAdmin(path, group string) (_ *adminSocket, err error) {
	gid := -1
	if group != "" {
		if gid, err = lookupGroup(group); err != nil {
			return nil, fmt.Errorf("admin.group: %w", err)
		}
	}
	if err := clearStale(path); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(path), ".s") // mode 0700
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	defer os.RemoveAll(tmp)
	bind := filepath.Join(tmp, "s")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: bind, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	defer func() {
		if err != nil {
			_ = ln.Close()
		}
	}()
	ln.SetUnlinkOnClose(false) // it moves; shutdown removes it by its final name
	mode := os.FileMode(0o600)
	if gid >= 0 {
		if err := os.Lchown(bind, -1, gid); err != nil {
			return nil, fmt.Errorf("admin.group %s: %w", group, err)
		}
		mode = 0o660
	}
	if err := os.Chmod(bind, mode); err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	if err := os.Rename(bind, path); err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	return &adminSocket{path: path, file: fi, ln: ln}, nil
}

// clearStale checks what is at path: nothing, or a socket that refuses
// connections (a serve that did not stop cleanly), which the new socket
// then replaces. A socket something answers on, one this user may not
// connect to, and any other file are left alone and refuse the start.
func clearStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("admin socket: %w", err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("admin socket %s: a file that is not a socket is in the way; move it or set admin.socket", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		_ = c.Close()
		return fmt.Errorf("admin socket %s: another process answers on it; is another taglock serving with this admin.socket?", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("admin socket %s is in the way and was left alone: %w", path, err)
	}
	return nil
}

// lookupGroup turns a group name or numeric id into a gid.
func lookupGroup(group string) (int, error) {
	if gid, err := strconv.Atoi(group); err == nil {
		return gid, nil
	}
	g, err := user.LookupGroup(group)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(g.Gid)
}

// start answers h on the socket, in the background, until shutdown; each
// request's context names the peer for the admin calls' log and audit
// lines.
func (a *adminSocket) start(h http.Handler, log zerolog.Logger) {
	a.http = &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 30 * time.Second,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return admin.WithCaller(ctx, peerCaller(c))
		},
	}
	go func() {
		if err := a.http.Serve(a.ln); !errors.Is(err, http.ErrServerClosed) {
			log.Error().Err(err).Str("admin_socket", a.path).Msg("admin socket stopped answering")
		}
	}()
}

// shutdown stops the server (or just the listener, if it never served)
// and removes the socket, unless another one has replaced it.
func (a *adminSocket) shutdown(ctx context.Context) error {
	if a == nil {
		return nil
	}
	var err error
	if a.http != nil {
		err = a.http.Shutdown(ctx)
	} else {
		_ = a.ln.Close()
	}
	if fi, lerr := os.Lstat(a.path); lerr == nil && os.SameFile(fi, a.file) {
		_ = os.Remove(a.path)
	}
	return err
}
