//go:build bench

package bench

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/taglock/taglock/integration/internal/proc"
)

// nginxConf is nginx set up as a streaming reverse proxy, the way one would
// put it in front of a registry: neither request nor response bodies are
// buffered to disk, keep-alive connections to the upstream, 256 KiB buffers
// like taglock's, no access log, and the client's Host kept so that the
// registry's upload Locations point back at nginx. The verbs fill in the
// state directory (four times), the port and the upstream's address.
const nginxConf = `worker_processes 1;
daemon off;
pid %[1]s/nginx.pid;
error_log stderr warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path %[1]s/body;
  proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi;
  scgi_temp_path %[1]s/scgi;
  upstream registry { server %[3]s; keepalive 64; }
  server {
    listen 127.0.0.1:%[2]d;
    client_max_body_size 0;
    location / {
      proxy_pass http://registry;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_request_buffering off;
      proxy_buffering off;
      proxy_buffer_size 256k;
      proxy_buffers 8 256k;
    }
  }
}
`

// startNginx runs nginx (env NGINX_BIN) in front of upstream (host:port) as
// a reference: a production C proxy on the same loopback hop as the control
// and taglock. nginx cannot listen on port 0 and say which port it got, so
// this binds 127.0.0.1:0 itself and hands nginx the socket as an inherited
// listener (fd 3, announced in the NGINX environment variable, the way
// nginx passes sockets across a binary upgrade).
func startNginx(b testing.TB, upstream string) *process {
	b.Helper()
	bin := proc.Tool(b, "NGINX_BIN")
	dir := b.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		b.Fatal(err)
	}
	// The child holds its own copy of the socket; this process keeps none.
	defer f.Close()
	defer ln.Close()
	conf := filepath.Join(dir, "nginx.conf")
	port := ln.Addr().(*net.TCPAddr).Port
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(nginxConf, dir, port, upstream)), 0o600); err != nil {
		b.Fatal(err)
	}
	return proc.Start(b, proc.Spec{Name: "nginx", Bin: bin,
		Args: []string{"-p", dir, "-e", "stderr", "-c", conf},
		Env:  proc.Environ("NGINX=3;"), ExtraFiles: []*os.File{f},
		Sockets: true, Ready: "/v2/"})
}
