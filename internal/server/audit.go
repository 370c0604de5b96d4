package server

import (
	"encoding/json"
	"fmt"
	"os"
	"sync"

	"github.com/rs/zerolog"
)

// auditLog is where audit events go: the log, and, with log.audit set, a
// file of JSON lines as well.
type auditLog struct {
	mu   sync.Mutex
	file *os.File
	log  zerolog.Logger
}

// openAudit returns the audit logger. With path empty it is log itself;
// otherwise every event is appended to path as one JSON line, whatever the
// log level, and passed on to log (which filters and formats it as usual).
func openAudit(path string, log zerolog.Logger) (zerolog.Logger, *auditLog, error) {
	if path == "" {
		return log, nil, nil
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return zerolog.Logger{}, nil, fmt.Errorf("log.audit: %w", err)
	}
	a := &auditLog{file: f, log: log}
	return zerolog.New(a).With().Timestamp().Logger(), a, nil
}

// OpenAudit is the audit logger of a command that changes the ledger while
// serve is not running: as serve's, it appends to path (log.audit) when
// that is set, and passes every event on to log. close closes the file.
func OpenAudit(path string, log zerolog.Logger) (audit zerolog.Logger, close func(), err error) {
	audit, f, err := openAudit(path, log)
	if err != nil {
		return zerolog.Logger{}, nil, err
	}
	return audit, func() { _ = f.Close() }, nil
}

// Write takes one event, as zerolog writes it: a complete JSON line.
func (a *auditLog) Write(p []byte) (int, error) {
	a.mu.Lock()
	_, err := a.file.Write(p)
	a.mu.Unlock()
	var fields map[string]any
	if json.Unmarshal(p, &fields) == nil {
		level, _ := zerolog.ParseLevel(fmt.Sprint(fields[zerolog.LevelFieldName]))
		msg, _ := fields[zerolog.MessageFieldName].(string)
		delete(fields, zerolog.LevelFieldName)
		delete(fields, zerolog.MessageFieldName)
		delete(fields, zerolog.TimestampFieldName)
		a.log.WithLevel(level).Fields(fields).Msg(msg)
	}
	if err != nil {
		a.log.Error().Err(err).Str("file", a.file.Name()).Msg("could not write the audit file")
	}
	return len(p), nil
}

// Close closes the file.
func (a *auditLog) Close() error {
	if a == nil {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.file.Close()
}
