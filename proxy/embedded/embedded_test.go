package embedded

import (
	"testing"

	"github.com/rs/zerolog"
	"github.com/sirupsen/logrus"
)

// Distribution's request logging goes to debug whatever level it used;
// answers of 500 and above and errors about anything else stay errors.
func TestLevel(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name  string
		level logrus.Level
		msg   string
		data  logrus.Fields
		want  zerolog.Level
	}{
		{"404 answer", logrus.ErrorLevel, "response completed with error", logrus.Fields{"http.response.status": 404, "err.code": "blob unknown"}, zerolog.DebugLevel},
		{"client went away", logrus.ErrorLevel, "client disconnected during blob PATCH", nil, zerolog.DebugLevel},
		{"500 answer", logrus.ErrorLevel, "response completed with error", logrus.Fields{"http.response.status": 500}, zerolog.ErrorLevel},
		{"storage error", logrus.ErrorLevel, "unknown error reading request payload: i/o error", nil, zerolog.ErrorLevel},
		{"no status yet", logrus.ErrorLevel, "error resolving upload", logrus.Fields{"http.response.status": 0}, zerolog.ErrorLevel},
		{"warning", logrus.WarnLevel, "blob path should not be a directory", nil, zerolog.WarnLevel},
		{"request completed", logrus.InfoLevel, "response completed", logrus.Fields{"http.response.status": 200}, zerolog.DebugLevel},
	} {
		e := &logrus.Entry{Level: tt.level, Message: tt.msg, Data: tt.data}
		if got := level(e); got != tt.want {
			t.Errorf("%s: level %s, want %s", tt.name, got, tt.want)
		}
	}
}
