//go:build !linux

package rawio

import "net"

// New reports false: off Linux the data path uses package net.
func New(c net.Conn) (*Socket, bool) { return nil, false }
