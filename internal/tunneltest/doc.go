// Package tunneltest holds test helpers: leak checks for goroutines and file
// descriptors, an echo service, a log sink that feeds t.Log and can be
// searched, and an in-process tunneld + tunnelc harness on 127.0.0.1.
//
// It must only be imported from _test.go files.
//
// It is Linux's, as the tests are: it uses network namespaces, pidfds and
// TCP_INFO.
package tunneltest
