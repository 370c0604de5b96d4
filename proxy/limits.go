package proxy

import "net/http"

// isUpload reports whether a request starts a blob upload or carries its
// data: the requests Options.MaxUploads caps. Upload status and cancel
// are not counted.
func isUpload(rt Route, method string) bool {
	return rt.Kind == KindUploadStart || rt.Kind == KindUpload && (method == http.MethodPatch || method == http.MethodPut)
}

// uploads counts the upload requests in flight.
type uploads struct {
	slots   chan struct{} // one token per upload in flight (Options.MaxUploads); nil: no cap
	metrics *Metrics
}

// admit counts an upload request in flight, or refuses it with
// errTooManyUploads when Options.MaxUploads are already. The returned func
// ends it.
func (s *uploads) admit(r *http.Request, rt Route) (func(), error) {
	if !isUpload(rt, r.Method) {
		return func() {}, nil
	}
	if s.slots != nil {
		select {
		case s.slots <- struct{}{}:
		default:
			return nil, errTooManyUploads
		}
	}
	if s.metrics != nil {
		s.metrics.uploads.Inc()
	}
	return func() {
		if s.metrics != nil {
			s.metrics.uploads.Dec()
		}
		if s.slots != nil {
			<-s.slots
		}
	}, nil
}
