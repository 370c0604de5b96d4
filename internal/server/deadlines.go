package server

import (
	"io"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// withDeadlines bounds how long a client may stall while taglock reads its
// request body or writes its response, without bounding how long either
// takes: every read of the body moves the connection's read deadline
// bodyIdle ahead, and every write of the response moves its write deadline
// writeIdle ahead. A multi-GiB upload or download on a slow link runs as
// long as data flows; a client that stops sending, or stops reading, is cut
// off after the idle timeout. A zero timeout leaves that side unbounded.
func withDeadlines(h http.Handler, bodyIdle, writeIdle time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		dw := &deadlineWriter{ResponseWriter: w}
		dw.d.init(writeIdle, rc.SetWriteDeadline)
		var body *idleBody
		if bodyIdle > 0 && r.Body != nil && r.Body != http.NoBody {
			body = &idleBody{ReadCloser: r.Body}
			body.d.init(bodyIdle, rc.SetReadDeadline)
			r.Body = body
		}
		h.ServeHTTP(dw, r)
		// After the handler, the server writes what is still buffered
		// and reads what the handler left of the body (to reuse the
		// connection): bound both. It clears the deadlines before the
		// connection's next request.
		dw.d.extend(true)
		if body != nil && !body.done.Load() {
			body.d.extend(true)
		}
	})
}

// epoch makes deadline bookkeeping monotonic.
var epoch = time.Now()

// slider moves one of a connection's deadlines ahead as data flows. To keep
// the cost per read or write low it moves the deadline only when an eighth
// of the idle timeout has passed since it last did, so the deadline is
// always at least seven eighths of the timeout away when data moves.
type slider struct {
	idle time.Duration
	set  func(time.Time) error
	last atomic.Int64 // time since epoch of the last move
	off  atomic.Bool  // the writer cannot set deadlines
}

func (s *slider) init(idle time.Duration, set func(time.Time) error) {
	s.idle, s.set = idle, set
	s.last.Store(int64(-idle)) // the first extend moves it
	s.off.Store(idle <= 0)
}

func (s *slider) extend(force bool) {
	if s.off.Load() {
		return
	}
	now := time.Since(epoch)
	if !force && now-time.Duration(s.last.Load()) < s.idle/8 {
		return
	}
	if s.set(epoch.Add(now+s.idle)) != nil { // http.ErrNotSupported
		s.off.Store(true)
		return
	}
	s.last.Store(int64(now))
}

func (s *slider) clear() {
	if !s.off.Load() && s.set(time.Time{}) != nil {
		s.off.Store(true)
	}
}

// idleBody is a request body whose every read must deliver within the
// idle timeout.
type idleBody struct {
	io.ReadCloser
	d    slider
	done atomic.Bool // the body ended or failed
}

func (b *idleBody) Read(p []byte) (int, error) {
	if b.done.Load() {
		return b.ReadCloser.Read(p)
	}
	b.d.extend(false)
	n, err := b.ReadCloser.Read(p)
	switch {
	case err == io.EOF:
		// HTTP/1 reads the connection in the background from here
		// on, and must not inherit this deadline.
		b.done.Store(true)
		b.d.clear()
	case err != nil:
		// A deadline that passed stays: whoever reads on (the server
		// discarding the rest of the body) fails at once.
		b.done.Store(true)
	}
	return n, err
}

// deadlineWriter moves the write deadline ahead before every write.
type deadlineWriter struct {
	http.ResponseWriter
	d slider
}

func (w *deadlineWriter) WriteHeader(code int) {
	w.d.extend(false)
	w.ResponseWriter.WriteHeader(code)
}

func (w *deadlineWriter) Write(p []byte) (int, error) {
	w.d.extend(false)
	return w.ResponseWriter.Write(p)
}

// Flush implements http.Flusher for streamed responses.
func (w *deadlineWriter) Flush() {
	w.d.extend(false)
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the writer below.
func (w *deadlineWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// sendfileChunk is how much of a file one sendfile call may send before
// the write deadline moves again.
const sendfileChunk = 1 << 20

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// ReadFrom keeps the server's sendfile path for files, moving the deadline
// every sendfileChunk; anything else is copied through Write, so that each
// write moves the deadline however slowly the source delivers.
func (w *deadlineWriter) ReadFrom(src io.Reader) (int64, error) {
	rf, ok := w.ResponseWriter.(io.ReaderFrom)
	file, limited := sendfileSource(src)
	if !ok || file == nil {
		buf := copyBuffers.Get().(*[]byte)
		defer copyBuffers.Put(buf)
		return io.CopyBuffer(writerOnly{w}, src, *buf)
	}
	var total int64
	for {
		chunk := &io.LimitedReader{R: file, N: sendfileChunk}
		if limited != nil {
			if limited.N <= 0 {
				return total, nil
			}
			chunk.N = min(limited.N, sendfileChunk)
		}
		want := chunk.N
		w.d.extend(true)
		n, err := rf.ReadFrom(chunk)
		total += n
		if limited != nil {
			limited.N -= n
		}
		if err != nil || n < want { // n < want: the file ended
			return total, err
		}
	}
}

// sendfileSource returns the file under src when the kernel can send it
// directly: an *os.File, or an *io.LimitedReader of one.
func sendfileSource(src io.Reader) (*os.File, *io.LimitedReader) {
	switch s := src.(type) {
	case *os.File:
		return s, nil
	case *io.LimitedReader:
		if f, ok := s.R.(*os.File); ok {
			return f, s
		}
	}
	return nil, nil
}

// writerOnly hides ReadFrom, so io.CopyBuffer uses Write.
type writerOnly struct{ io.Writer }
