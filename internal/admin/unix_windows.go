package admin

import (
	"errors"
	"net"
)

// listenUnix: Windows gets the TCP form only.
func listenUnix(string) (net.Listener, error) {
	return nil, errors.New("not supported on Windows: use admin.address = \"127.0.0.1:PORT\"")
}
