package storage

import (
	"bufio"
	"encoding/json"
	"io"
)

// The export format: JSON lines, each a record's own JSON fields plus a
// "type" naming the record: "binding", "manifest", "pull", "reservation" or
// "event". Every backend writes it through ExportWriter and reads it through
// ReadImport, so a ledger moves between backends with export and import.

// Export record types, the "type" field of every line.
const (
	recordBinding     = "binding"
	recordEvent       = "event"
	recordManifest    = "manifest"
	recordPull        = "pull"
	recordReservation = "reservation"
)

// Each export line is a record's own JSON fields plus "type".
type (
	bindingLine struct {
		Type string `json:"type"`
		Binding
	}
	eventLine struct {
		Type string `json:"type"`
		Event
	}
	manifestLine struct {
		Type string `json:"type"`
		Manifest
	}
	pullLine struct {
		Type string `json:"type"`
		Pull
	}
	reservationLine struct {
		Type string `json:"type"`
		Reservation
		// Expect was stored with reservations by earlier versions; it
		// is read and ignored.
		Expect json.RawMessage `json:"expect,omitempty"`
	}
)

// ExportWriter writes export lines. A backend's Export writes every record
// through one, in the order Ledger.Export documents, and then calls Flush.
type ExportWriter struct {
	bw  *bufio.Writer
	enc *json.Encoder
}

// NewExportWriter returns an ExportWriter buffering into w.
func NewExportWriter(w io.Writer) *ExportWriter {
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	enc.SetEscapeHTML(false)
	return &ExportWriter{bw: bw, enc: enc}
}

// Binding writes a binding line.
func (x *ExportWriter) Binding(b Binding) error { return x.enc.Encode(bindingLine{recordBinding, b}) }

// Manifest writes a manifest line.
func (x *ExportWriter) Manifest(m Manifest) error {
	return x.enc.Encode(manifestLine{recordManifest, m})
}

// Pull writes a pull line; the time is written in UTC.
func (x *ExportWriter) Pull(p Pull) error {
	p.At = p.At.UTC()
	return x.enc.Encode(pullLine{recordPull, p})
}

// Reservation writes a reservation line.
func (x *ExportWriter) Reservation(r Reservation) error {
	return x.enc.Encode(reservationLine{Type: recordReservation, Reservation: r})
}

// Event writes an event line.
func (x *ExportWriter) Event(e Event) error { return x.enc.Encode(eventLine{recordEvent, e}) }

// Flush writes what is buffered.
func (x *ExportWriter) Flush() error { return x.bw.Flush() }
