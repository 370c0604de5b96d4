package server

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// patience is how long a test waits for something that must happen soon:
// far above every bound the tests configure, so a loaded machine cannot
// make them fail, only a wait that never ends.
const patience = 20 * time.Second

// slowIdle is the idle timeout of the tests whose transfers take longer in
// total but never stall.
const slowIdle = 3 * time.Second

// startDeadlines serves h behind withDeadlines on a loopback listener.
func startDeadlines(t *testing.T, h http.HandlerFunc, bodyIdle, writeIdle time.Duration) string {
	t.Helper()
	srv := httptest.NewServer(withDeadlines(h, bodyIdle, writeIdle))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// dial connects to addr; a positive rcvbuf shrinks the receive buffer, so a
// client that stops reading makes the server's writes block soon.
func dial(t *testing.T, addr string, rcvbuf int) net.Conn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, patience)
	if err != nil {
		t.Fatal(err)
	}
	if rcvbuf > 0 {
		if err := conn.(*net.TCPConn).SetReadBuffer(rcvbuf); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { _ = conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(patience))
	return conn
}

// result waits for a handler's outcome.
func result[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(patience):
		t.Fatalf("%s: nothing after %s", what, patience)
		panic("unreachable")
	}
}

// A request body that stops delivering is cut off after the idle timeout:
// the handler's read fails with a deadline error instead of waiting on the
// client, and the connection is closed rather than left to the client,
// whether the handler read the body or left it unread.
func TestBodyIdleTimeoutCutsAStalledBody(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		read bool
	}{{"read by the handler", true}, {"left unread", false}} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			errs := make(chan error, 1)
			addr := startDeadlines(t, func(w http.ResponseWriter, r *http.Request) {
				if !tt.read {
					w.WriteHeader(http.StatusRequestEntityTooLarge)
					return
				}
				_, err := io.ReadAll(r.Body)
				errs <- err
			}, 200*time.Millisecond, time.Minute)
			conn := dial(t, addr, 0)
			fmt.Fprintf(conn, "PATCH /v2/x/blobs/uploads/u HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nx")
			if tt.read {
				if err := result(t, errs, "stalled body"); !errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatalf("reading a stalled body: %v, want a deadline error", err)
				}
			}
			if _, err := io.ReadAll(conn); errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("the connection of a stalled body was still open after %s", patience)
			}
		})
	}
}

// A body that keeps delivering is read in full however long it takes in
// total: 4 s of bytes, one every 50 ms, against a 3 s idle timeout (the
// margin absorbs a loaded machine).
func TestBodyIdleTimeoutAllowsASlowBody(t *testing.T) {
	t.Parallel()
	type read struct {
		n   int
		err error
	}
	reads := make(chan read, 1)
	addr := startDeadlines(t, func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		reads <- read{len(b), err}
	}, slowIdle, time.Minute)
	conn := dial(t, addr, 0)
	const n = 80
	fmt.Fprintf(conn, "PATCH /v2/x/blobs/uploads/u HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", n)
	for range n {
		time.Sleep(50 * time.Millisecond)
		if _, err := conn.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	if got := result(t, reads, "slow body"); got.err != nil || got.n != n {
		t.Fatalf("slow body: read %d bytes, %v; want %d and no error", got.n, got.err, n)
	}
}

// writeUntilError writes chunks to w until a write fails, at most 1 GiB.
func writeUntilError(w io.Writer) error {
	chunk := make([]byte, 256<<10)
	for range 4096 {
		if _, err := w.Write(chunk); err != nil {
			return err
		}
	}
	return errors.New("1 GiB written to a client that reads nothing")
}

// A response to a client that stops reading is cut off after the idle
// timeout, through Write and through ReadFrom from a file (sendfile).
func TestWriteIdleTimeoutCutsAClientThatStopsReading(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "blob")
	if err := os.WriteFile(file, make([]byte, 64<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name  string
		write func(w http.ResponseWriter) error
	}{
		{"write", func(w http.ResponseWriter) error { return writeUntilError(w) }},
		{"sendfile", func(w http.ResponseWriter) error {
			f, err := os.Open(file)
			if err != nil {
				return err
			}
			defer f.Close()
			if _, err := io.Copy(w, f); err != nil {
				return err
			}
			return errors.New("64 MiB sent to a client that reads nothing")
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			errs := make(chan error, 1)
			addr := startDeadlines(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Length", strconv.Itoa(64<<20))
				errs <- tt.write(w)
			}, time.Minute, 200*time.Millisecond)
			conn := dial(t, addr, 4096)
			fmt.Fprintf(conn, "GET /v2/x/blobs/sha256:x HTTP/1.1\r\nHost: x\r\n\r\n")
			if err := result(t, errs, "stalled download"); !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("writing to a client that stopped reading: %v, want a deadline error", err)
			}
		})
	}
}

// slowReader delivers n chunks of 8 KiB, one every gap: more than the
// server buffers, so the copy writes to the connection as it goes.
type slowReader struct {
	n   int
	gap time.Duration
}

const slowChunk = 8 << 10

func (s *slowReader) Read(p []byte) (int, error) {
	if s.n == 0 {
		return 0, io.EOF
	}
	time.Sleep(s.gap)
	s.n--
	return copy(p, bytes.Repeat([]byte("x"), min(len(p), slowChunk))), nil
}

// A response that keeps flowing is written in full however long it takes
// in total (4 s, a chunk every 50 ms, against a 3 s idle timeout), through
// Write and through ReadFrom from a source that is not a file.
func TestWriteIdleTimeoutAllowsASlowResponse(t *testing.T) {
	t.Parallel()
	const n = 80
	for _, tt := range []struct {
		name  string
		write func(w http.ResponseWriter) error
	}{
		{"write", func(w http.ResponseWriter) error {
			for range n {
				time.Sleep(50 * time.Millisecond)
				if _, err := w.Write(bytes.Repeat([]byte("x"), slowChunk)); err != nil {
					return err
				}
				w.(http.Flusher).Flush()
			}
			return nil
		}},
		{"copy from a slow source", func(w http.ResponseWriter) error {
			_, err := io.Copy(w, &slowReader{n: n, gap: 50 * time.Millisecond})
			return err
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			errs := make(chan error, 1)
			addr := startDeadlines(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Length", strconv.Itoa(n*slowChunk))
				errs <- tt.write(w)
			}, time.Minute, slowIdle)
			conn := dial(t, addr, 0)
			fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(resp.Body)
			if err != nil || !bytes.Equal(b, bytes.Repeat([]byte("x"), n*slowChunk)) {
				t.Fatalf("slow response: %d bytes, %v; want %d", len(b), err, n*slowChunk)
			}
			if err := result(t, errs, "slow response"); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// The deadlines one request sets do not cut off the next one on the same
// keep-alive connection, however long it was idle in between: neither the
// "100 Continue" the server writes before the handler does, nor the
// handler's reads and writes.
func TestDeadlinesDoNotOutliveTheirRequest(t *testing.T) {
	t.Parallel()
	addr := startDeadlines(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = w.Write([]byte("ok"))
	}, 100*time.Millisecond, 100*time.Millisecond)
	conn := dial(t, addr, 0)
	br := bufio.NewReader(conn)
	for i := range 2 {
		fmt.Fprintf(conn, "PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != http.StatusContinue {
			t.Fatalf("request %d: %v, want 100 Continue", i+1, err)
		}
		fmt.Fprintf(conn, "ab")
		if resp, err = http.ReadResponse(br, nil); err != nil {
			t.Fatalf("request %d: %v", i+1, err)
		}
		b, err := io.ReadAll(resp.Body)
		if err != nil || string(b) != "ok" {
			t.Fatalf("request %d: %q, %v", i+1, b, err)
		}
		time.Sleep(500 * time.Millisecond) // both deadlines of the first request pass
	}
}
