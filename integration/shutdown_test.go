package integration

import (
	"bytes"
	"crypto/rand"
	"io"
	"net/http"
	"testing"
	"time"
)

// A graceful shutdown lets an upload that is in flight finish: the PATCH
// that was streaming when shutdown began still gets its 202, and shutdown
// returns only after it.
func TestShutdownDrainsUploadInFlight(t *testing.T) {
	t.Parallel()
	forEachMode(t, func(t *testing.T, m Mode) {
		e := MustEnv(t, m)
		resp, _ := do(t, http.MethodPost, e.URL("/v2/team/app/blobs/uploads/"), nil, nil)
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("start upload: %d", resp.StatusCode)
		}
		loc, err := resp.Location()
		if err != nil {
			t.Fatal(err)
		}

		blob := make([]byte, 4<<20)
		_, _ = rand.Read(blob)
		pr, pw := io.Pipe()
		req, err := http.NewRequest(http.MethodPatch, loc.String(), pr)
		if err != nil {
			t.Fatal(err)
		}
		req.ContentLength = int64(len(blob))
		req.Header.Set("Content-Type", "application/octet-stream")
		type result struct {
			status int
			err    error
		}
		patched := make(chan result, 1)
		go func() {
			// A connection of its own: a keep-alive connection that the
			// server still counts as idle could be closed under the request.
			client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
			resp, err := client.Do(req)
			if err != nil {
				patched <- result{err: err}
				return
			}
			resp.Body.Close()
			patched <- result{status: resp.StatusCode}
		}()
		if _, err := pw.Write(blob[:1<<20]); err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond) // let the server start handling it: the upload is now in flight

		srv := e.srv
		shutdowns.Store(srv, struct{}{}) // this test shuts it down itself
		stopped := make(chan error, 1)
		go func() { stopped <- srv.Shutdown(t.Context()) }()
		select {
		case err := <-stopped:
			t.Fatalf("shutdown returned (%v) while an upload was still streaming", err)
		case <-time.After(300 * time.Millisecond):
		}
		if _, err := io.Copy(pw, bytes.NewReader(blob[1<<20:])); err != nil {
			t.Fatal(err)
		}
		pw.Close()
		if r := <-patched; r.err != nil || r.status != http.StatusAccepted {
			t.Fatalf("PATCH during shutdown: status %d, err %v; want 202", r.status, r.err)
		}
		select {
		case err := <-stopped:
			if err != nil {
				t.Fatalf("shutdown: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("shutdown did not return after the upload finished")
		}
	})
}
