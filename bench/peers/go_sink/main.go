// Command go_sink is the go-smtp peer of the txsmtpsrv benchmark (bench/_peers.py, kind
// "go-smtp"): an SMTP sink on github.com/emersion/go-smtp that reads every message body
// and throws it away.
//
// It listens on 127.0.0.1, port 0, and writes one line "READY <port> <pid> <detail>" to
// stdout, as every benchmark server does, then serves until it is killed.  It dies with
// its parent (PR_SET_PDEATHSIG).  With -cert and -key it offers STARTTLS.  It is built
// offline from Debian's golang-github-emersion-go-smtp-dev (GO111MODULE=off, GOPATH
// /usr/share/gocode) by bench/_toolchains.py; go-smtp's version is passed in at link time.
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"runtime"
	"syscall"
	"time"

	"github.com/emersion/go-smtp"
)

// libVersion is go-smtp's version, set with -ldflags "-X main.libVersion=...".
var libVersion = "unknown"

// idleTimeout matches the other benchmark servers (300 s); the benchmark never idles that long.
const idleTimeout = 300 * time.Second

type backend struct{}

// Login refuses AUTH: the sink is anonymous, like the benchmark's other servers.
func (backend) Login(_ *smtp.ConnectionState, _, _ string) (smtp.Session, error) {
	return nil, smtp.ErrAuthUnsupported
}

// AnonymousLogin gives every client a session that accepts everything.
func (backend) AnonymousLogin(_ *smtp.ConnectionState) (smtp.Session, error) {
	return session{}, nil
}

type session struct{}

func (session) Reset()                                  {}
func (session) Logout() error                           { return nil }
func (session) Mail(_ string, _ smtp.MailOptions) error { return nil }
func (session) Rcpt(_ string) error                     { return nil }

// Data reads the whole body (go-smtp undoes the dot-stuffing) and keeps nothing.
func (session) Data(r io.Reader) error {
	_, err := io.Copy(io.Discard, r)
	return err
}

func dieWithParent() {
	// PR_SET_PDEATHSIG = 1: SIGKILL us when the benchmark process goes away.
	_, _, _ = syscall.RawSyscall(syscall.SYS_PRCTL, 1, uintptr(syscall.SIGKILL), 0)
	if os.Getppid() == 1 {
		os.Exit(1)
	}
}

func main() {
	cert := flag.String("cert", "", "PEM certificate (chain) file; with -key, offer STARTTLS")
	key := flag.String("key", "", "PEM private key file")
	flag.Parse()
	dieWithParent()

	s := smtp.NewServer(backend{})
	s.Domain = "bench"
	s.AuthDisabled = true
	s.MaxMessageBytes = 64 << 20
	s.MaxRecipients = 0
	s.ReadTimeout = idleTimeout
	s.WriteTimeout = idleTimeout
	s.ErrorLog = log.New(os.Stderr, "go-smtp ", log.LstdFlags)
	tlsNote := "tls=off"
	if *cert != "" || *key != "" {
		pair, err := tls.LoadX509KeyPair(*cert, *key)
		if err != nil {
			fmt.Fprintf(os.Stderr, "cannot load -cert/-key: %v\n", err)
			os.Exit(2)
		}
		s.TLSConfig = &tls.Config{Certificates: []tls.Certificate{pair}}
		tlsNote = "tls=starttls"
	}

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintf(os.Stderr, "listen failed: %v\n", err)
		os.Exit(1)
	}
	port := l.Addr().(*net.TCPAddr).Port
	fmt.Printf("READY %d %d go-smtp=%s %s GOMAXPROCS=%d %s\n",
		port, os.Getpid(), libVersion, runtime.Version(), runtime.GOMAXPROCS(0), tlsNote)
	os.Stdout.Sync()
	if err := s.Serve(l); err != nil {
		fmt.Fprintf(os.Stderr, "serve: %v\n", err)
		os.Exit(1)
	}
}
