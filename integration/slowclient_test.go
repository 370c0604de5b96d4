package integration

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/taglock/taglock/internal/config"
)

// TestSlowHeadersAreCutOff ensures that a client that keeps sending header
// lines and never ends its headers (slowloris) is disconnected once
// limits.read_header_timeout has passed, without an answer and without
// anything reaching the registry or taglock's handler.
func TestSlowHeadersAreCutOff(t *testing.T) {
	t.Parallel()
	const timeout = 2 * time.Second
	forEachMode(t, func(t *testing.T, m Mode) {
		e := MustEnv(t, m, func(c *config.Config) { c.Limits.ReadHeaderTimeout = config.Duration(timeout) })
		MustPush(t, e.Addr, "team/app:v1", MustImage(t))
		before, handled := e.forwards(t), scrapeSum(t, e.Addr, "taglock_requests_total")

		conn, err := net.DialTimeout("tcp", e.Addr, 5*time.Second)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		defer conn.Close()
		start := time.Now()
		_ = conn.SetDeadline(start.Add(timeout + 20*time.Second))
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			if _, err := io.WriteString(conn, "DELETE /v2/team/app/manifests/v1 HTTP/1.1\r\nHost: registry.test\r\n"); err != nil {
				return
			}
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-time.After(timeout / 8):
				}
				if _, err := fmt.Fprintf(conn, "X-Slow-%d: a\r\n", i); err != nil {
					return
				}
			}
		}()
		got, err := io.ReadAll(conn)
		elapsed := time.Since(start)
		if len(got) != 0 || (err != nil && !isHangUp(err)) {
			t.Fatalf("after %v the server sent %q (%v), want it to hang up without an answer", elapsed, got, err)
		}
		if elapsed < timeout*3/4 || elapsed > timeout+5*time.Second {
			t.Errorf("the server hung up after %v, want about %v", elapsed, timeout)
		}
		if after := e.forwards(t); after != before {
			t.Errorf("the slow client made taglock send %s to the registry", after.minus(before))
		}
		// The scrape before is counted by now; the one now is not yet.
		if n := scrapeSum(t, e.Addr, "taglock_requests_total") - handled; n != 0 {
			t.Errorf("taglock's handler saw %v requests of the slow client, want none", n)
		}
	})
}

// TestStalledManifestBodyHoldsNothing ensures that a manifest PUT whose body
// stalls halfway holds no reservation and sends nothing upstream while it
// waits: another client pushes the same tag meanwhile, and when the stalled
// body finally arrives it is judged against that push and refused.
func TestStalledManifestBodyHoldsNothing(t *testing.T) {
	t.Parallel()
	forEachMode(t, func(t *testing.T, m Mode) {
		e := MustEnv(t, m)
		f := mustHostileFixture(t, e)
		third := MustImage(t)
		MustPushByDigest(t, e.Addr, "team/app", third)
		thirdM := MustManifest(t, third)
		before := e.forwards(t)

		conn, err := net.DialTimeout("tcp", e.Addr, 5*time.Second)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
		stalled := put(manifests+"v2", f.other)
		half := len(stalled) - len(f.other.Raw)/2
		if _, err := io.WriteString(conn, stalled[:half]); err != nil {
			t.Fatalf("write: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
		if after := e.forwards(t); after != before {
			t.Errorf("a PUT with half its body made taglock send %s to the registry", after.minus(before))
		}
		if res, err := e.Ledger().Reservations(t.Context()); err != nil || len(res) != 0 {
			t.Errorf("reservations while the body stalls = %+v, %v; want none", res, err)
		}

		resp, body := putManifest(t, e.Addr, manifests+"v2", thirdM)
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("push of v2 while another stalls: %d %s", resp.StatusCode, body)
		}

		if _, err := io.WriteString(conn, stalled[half:]); err != nil {
			t.Fatalf("write the rest: %v", err)
		}
		checkAnswers(t, hostileCase{name: "the stalled PUT", want: []answer{denied}}, readResponses(t, "the stalled PUT", conn))
		if b, err := e.Ledger().Binding(t.Context(), "team/app", "v2"); err != nil || b.Digest != thirdM.Digest {
			t.Errorf("team/app:v2 is bound to %s (%v), want %s", b.Digest, err, thirdM.Digest)
		}
		e.wantServed(t, "team/app:v2", thirdM.Digest)
	})
}

// TestStalledManifestBodyIsCutOff ensures that a manifest PUT whose body
// stops halfway is answered 408 once limits.body_idle_timeout passes with
// no byte, having sent nothing to the registry and changed nothing.
func TestStalledManifestBodyIsCutOff(t *testing.T) {
	t.Parallel()
	const idle = time.Second
	forEachMode(t, func(t *testing.T, m Mode) {
		e := MustEnv(t, m, func(c *config.Config) { c.Limits.BodyIdleTimeout = config.Duration(idle) })
		f := mustHostileFixture(t, e)
		stored := e.state(t)
		before := e.forwards(t)

		conn, err := net.DialTimeout("tcp", e.Addr, 5*time.Second)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		defer conn.Close()
		start := time.Now()
		_ = conn.SetDeadline(start.Add(idle + 20*time.Second))
		stalled := put(manifests+"v1", f.other)
		if _, err := io.WriteString(conn, stalled[:len(stalled)-len(f.other.Raw)/2]); err != nil {
			t.Fatalf("write: %v", err)
		}
		checkAnswers(t, hostileCase{name: "the stalled PUT", want: []answer{{408, "MANIFEST_INVALID", "stopped arriving"}}},
			readResponses(t, "the stalled PUT", conn))
		if elapsed := time.Since(start); elapsed < idle*3/4 || elapsed > idle+5*time.Second {
			t.Errorf("the stalled PUT was cut off after %v, want about %v", elapsed, idle)
		}
		if after := e.forwards(t); after != before {
			t.Errorf("the stalled PUT made taglock send %s to the registry", after.minus(before))
		}
		if now := e.state(t); now.records != stored.records || now.tags != stored.tags {
			t.Errorf("the stalled PUT changed what is stored:\nledger before:\n%s\nafter:\n%s", stored.records, now.records)
		}
	})
}
