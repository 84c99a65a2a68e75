//! Message stream encryption (MSE/PE, "BitTorrent protocol encryption"), sans-IO: the
//! Diffie-Hellman exchange, the synchronisation hashes, the choice of method and the initial
//! payload, for both roles, as a state machine fed received bytes that hands back bytes to
//! send. It never touches a socket or the clock; `mse/stream.rs` runs it on a stream and wraps
//! the stream afterwards, so the BitTorrent handshake and everything above it are unchanged.
//!
//! The exchange (A dials, B answers; `HASH` is SHA-1, `S` the shared DH secret, `SKEY` the
//! info-hash):
//!
//! 1. A → B: `Ya`, `PadA`
//! 2. B → A: `Yb`, `PadB`
//! 3. A → B: `HASH('req1', S)`, `HASH('req2', SKEY) xor HASH('req3', S)`,
//!    `ENCRYPT(VC, crypto_provide, len(PadC), PadC, len(IA)), ENCRYPT(IA)`
//! 4. B → A: `ENCRYPT(VC, crypto_select, len(PadD), PadD)`, then the payload stream
//!
//! Everything a peer sends is checked before use: pads are at most 512 bytes, the initial
//! payload at most [`MAX_INITIAL_PAYLOAD`], the synchronisation scans are bounded as the spec
//! says, and the internal buffer never holds more than one stage's worth plus one read.
//! Cryptographic primitives come from RustCrypto (`rc4`, `sha1`) and `num-bigint`.

use num_bigint::BigUint;
use rand::RngCore;
use rc4::{KeyInit, Rc4, StreamCipher};
use sha1::{Digest, Sha1};

use crate::types::InfoHash;

mod stream;
pub use stream::{negotiate, MseStream, NegotiateError, WRITE_BUFFER};

/// The 768-bit prime of the MSE spec (the Oakley group 1 prime), big-endian hex.
const PRIME_HEX: &[u8] = b"FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A63A36210000000000090563";
/// MSE spec: the generator of the exchange.
const GENERATOR: u32 = 2;
/// MSE spec: public keys and the shared secret are 768 bits, sent as 96 bytes big-endian.
pub const KEY_LEN: usize = 96;
/// MSE spec: the private key is at least 128 bits; 160 as libtorrent and the spec suggest.
const PRIVATE_KEY_LEN: usize = 20;
/// MSE spec: every pad (PadA..PadD) is 0 to 512 bytes.
pub const MAX_PAD: usize = 512;
/// MSE spec: the verification constant, 8 zero bytes.
const VC: [u8; 8] = [0; 8];
/// MSE spec: the first 1024 bytes of each RC4 key stream are discarded.
const RC4_DISCARD: usize = 1024;
/// Largest initial payload we accept. Clients send their 68-byte BitTorrent handshake (some
/// a few messages more); the field could claim 64 KiB, which nothing legitimate needs.
pub const MAX_INITIAL_PAYLOAD: usize = 4096;
/// What a plaintext BitTorrent handshake starts with (BEP 3): the way incoming connections are
/// told apart, since an MSE public key is random bytes.
pub const PLAINTEXT_PREFIX: &[u8; 20] = b"\x13BitTorrent protocol";

/// A set of crypto methods (`crypto_provide` / `crypto_select` bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CryptoMethods(u32);

impl CryptoMethods {
    /// MSE spec bit 0x01: the payload stays plaintext after the handshake.
    pub const PLAINTEXT: CryptoMethods = CryptoMethods(0x01);
    /// MSE spec bit 0x02: the payload is RC4-encrypted.
    pub const RC4: CryptoMethods = CryptoMethods(0x02);
    /// Both methods.
    pub const BOTH: CryptoMethods = CryptoMethods(0x03);

    /// The raw bits.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// Whether `method` is in the set.
    pub fn contains(self, method: Method) -> bool {
        self.0 & method.bit() != 0
    }
}

/// The method a handshake settled on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Payload in the clear (only the handshake was obfuscated).
    Plaintext,
    /// Payload RC4-encrypted.
    Rc4,
}

impl Method {
    fn bit(self) -> u32 {
        match self {
            Method::Plaintext => CryptoMethods::PLAINTEXT.0,
            Method::Rc4 => CryptoMethods::RC4.0,
        }
    }
}

/// Why an MSE handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum MseError {
    /// The responder found no `HASH('req1', S)` within 512 bytes of pad after `Ya`.
    #[error("no MSE synchronisation hash within the allowed pad")]
    SyncNotFound,
    /// The initiator found no encrypted verification constant within 512 bytes after `Yb`.
    #[error("no MSE verification constant within the allowed pad")]
    VcNotFound,
    /// The peer's public key is outside 2..P-2 (a degenerate secret).
    #[error("bad Diffie-Hellman public key")]
    BadPublicKey,
    /// `HASH('req2', SKEY)` names no torrent of ours.
    #[error("MSE handshake for a torrent we do not have")]
    UnknownTorrent,
    /// The decrypted verification constant is not zero: wrong key or garbage.
    #[error("bad MSE verification constant")]
    BadVerificationConstant,
    /// The initiator offered no method we accept.
    #[error("peer offers crypto methods {offered:#x}, we accept {accepted:#x}")]
    NoCommonMethod {
        /// `crypto_provide` as received.
        offered: u32,
        /// What our policy accepts.
        accepted: u32,
    },
    /// The responder selected something other than one of the methods we offered.
    #[error("peer selected crypto method {0:#x}, which we did not offer")]
    BadSelect(u32),
    /// A pad longer than 512 bytes.
    #[error("MSE pad of {0} bytes (at most 512)")]
    PadTooLong(usize),
    /// An initial payload over [`MAX_INITIAL_PAYLOAD`].
    #[error("MSE initial payload of {0} bytes (at most {MAX_INITIAL_PAYLOAD})")]
    InitialPayloadTooLong(usize),
    /// Input after the handshake finished or failed.
    #[error("MSE handshake already over")]
    Finished,
}

/// The random parts of one handshake: the private key and our pads. Drawn by
/// [`Secrets::random`]; tests fix them.
#[derive(Clone, Debug)]
pub struct Secrets {
    /// Private DH key, big-endian.
    pub private_key: [u8; PRIVATE_KEY_LEN],
    /// PadA (initiator) or PadB (responder): sent in the clear, random bytes, ≤ 512.
    pub pad: Vec<u8>,
    /// Length of PadC (initiator) or PadD (responder), ≤ 512; sent encrypted, so zeros.
    pub encrypted_pad_len: usize,
}

impl Secrets {
    /// Fresh secrets: a random 160-bit private key and a random pad of 0..=512 bytes (so the
    /// first packet's size tells nothing). The encrypted pad is left empty, as libtorrent does:
    /// nobody reads it and it costs a round of RC4.
    pub fn random(rng: &mut impl RngCore) -> Self {
        let mut private_key = [0; PRIVATE_KEY_LEN];
        rng.fill_bytes(&mut private_key);
        let len = (rng.next_u32() as usize) % (MAX_PAD + 1);
        let mut pad = vec![0; len];
        rng.fill_bytes(&mut pad);
        Secrets {
            private_key,
            pad,
            encrypted_pad_len: 0,
        }
    }
}

/// `HASH('req2', SKEY)`: what a responder compares against each of its torrents.
pub fn skey_hash(info_hash: &InfoHash) -> [u8; 20] {
    hash(&[b"req2", &info_hash.0])
}

/// Finds the torrent whose [`skey_hash`] is the given value (the responder's view of our
/// torrents, passed in by the session).
pub type SkeyLookup = Box<dyn Fn(&[u8; 20]) -> Option<InfoHash> + Send + Sync>;

/// The ciphers of an RC4 connection, positioned where the payload starts.
pub struct Ciphers {
    /// Decrypts what the peer sends.
    pub decrypt: Rc4,
    /// Encrypts what we send.
    pub encrypt: Rc4,
}

/// A finished handshake.
pub struct Established {
    /// The method both sides settled on.
    pub method: Method,
    /// The torrent (`SKEY`) the exchange was for.
    pub info_hash: InfoHash,
    /// `Some` exactly when [`Established::method`] is [`Method::Rc4`].
    pub ciphers: Option<Ciphers>,
    /// Payload bytes already received, decrypted: a responder's initial payload and whatever
    /// followed it, an initiator's bytes after PadD. They come before anything read later.
    pub initial: Vec<u8>,
}

impl std::fmt::Debug for Established {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Established")
            .field("method", &self.method)
            .field("info_hash", &self.info_hash)
            .field("initial", &self.initial.len())
            .finish()
    }
}

/// What [`MseHandshake::handle_input`] came to.
#[derive(Debug)]
pub enum Progress {
    /// Send [`MseHandshake::take_transmit`] and read more.
    NeedMore,
    /// Done: send what [`MseHandshake::take_transmit`] holds, then wrap the stream (boxed:
    /// two RC4 states are large next to `NeedMore`).
    Done(Box<Established>),
}

enum State {
    /// Initiator, sent `Ya`+PadA, waiting for `Yb`.
    InitYb {
        info_hash: InfoHash,
        provide: CryptoMethods,
        ia: Vec<u8>,
        encrypted_pad_len: usize,
    },
    /// Initiator, sent step 3, scanning for the encrypted VC.
    InitVc {
        info_hash: InfoHash,
        provide: CryptoMethods,
        marker: [u8; 8],
        ciphers: Ciphers,
    },
    /// Initiator, reading `crypto_select` and `len(PadD)`.
    InitSelect {
        info_hash: InfoHash,
        provide: CryptoMethods,
        ciphers: Ciphers,
    },
    /// Initiator, skipping PadD.
    InitPadD {
        info_hash: InfoHash,
        method: Method,
        ciphers: Ciphers,
        len: usize,
    },
    /// Responder, waiting for `Ya`.
    RespYa {
        accept: CryptoMethods,
        lookup: SkeyLookup,
        encrypted_pad_len: usize,
        /// `Yb` and PadB.
        reply: Vec<u8>,
    },
    /// Responder, sent `Yb`, scanning for `HASH('req1', S)`.
    RespReq1 {
        accept: CryptoMethods,
        lookup: SkeyLookup,
        encrypted_pad_len: usize,
        secret: [u8; KEY_LEN],
    },
    /// Responder, reading `HASH('req2', SKEY) xor HASH('req3', S)`.
    RespReq2 {
        accept: CryptoMethods,
        lookup: SkeyLookup,
        encrypted_pad_len: usize,
        secret: [u8; KEY_LEN],
    },
    /// Responder, reading VC, `crypto_provide`, `len(PadC)`.
    RespProvide {
        accept: CryptoMethods,
        info_hash: InfoHash,
        encrypted_pad_len: usize,
        ciphers: Ciphers,
    },
    /// Responder, reading PadC and `len(IA)`.
    RespPadC {
        method: Method,
        info_hash: InfoHash,
        encrypted_pad_len: usize,
        ciphers: Ciphers,
        len: usize,
    },
    /// Responder, reading IA.
    RespIa {
        method: Method,
        info_hash: InfoHash,
        encrypted_pad_len: usize,
        ciphers: Ciphers,
        len: usize,
    },
    /// Finished or failed.
    Over,
}

/// One MSE handshake, either role. Feed it what the peer sends ([`MseHandshake::handle_input`])
/// and send what [`MseHandshake::take_transmit`] returns, until it is done or fails.
pub struct MseHandshake {
    state: State,
    private: BigUint,
    /// Received and not consumed yet (at most one stage plus one read).
    buf: Vec<u8>,
    /// Bytes to send.
    out: Vec<u8>,
}

impl MseHandshake {
    /// The dialling side for torrent `info_hash`, offering `provide` and sending `ia` (our
    /// BitTorrent handshake) as initial payload. `Ya` and PadA are ready to send at once.
    pub fn initiator(
        info_hash: InfoHash,
        provide: CryptoMethods,
        ia: &[u8],
        secrets: Secrets,
    ) -> Self {
        debug_assert!(ia.len() <= MAX_INITIAL_PAYLOAD && secrets.pad.len() <= MAX_PAD);
        let private = BigUint::from_bytes_be(&secrets.private_key);
        let mut out = public_key(&private).to_vec();
        out.extend_from_slice(&secrets.pad[..secrets.pad.len().min(MAX_PAD)]);
        MseHandshake {
            state: State::InitYb {
                info_hash,
                provide,
                ia: ia.to_vec(),
                encrypted_pad_len: secrets.encrypted_pad_len.min(MAX_PAD),
            },
            private,
            buf: Vec::new(),
            out,
        }
    }

    /// The answering side, accepting the methods in `accept` (RC4 preferred when both are
    /// offered and accepted), finding the torrent through `lookup`. Feed it the first bytes
    /// (already read to tell MSE from plaintext) like any others.
    pub fn responder(accept: CryptoMethods, lookup: SkeyLookup, secrets: Secrets) -> Self {
        let private = BigUint::from_bytes_be(&secrets.private_key);
        // `Yb` goes out only once `Ya` is in (before, the peer may not even speak MSE).
        let mut reply = public_key(&private).to_vec();
        reply.extend_from_slice(&secrets.pad[..secrets.pad.len().min(MAX_PAD)]);
        MseHandshake {
            state: State::RespYa {
                accept,
                lookup,
                encrypted_pad_len: secrets.encrypted_pad_len.min(MAX_PAD),
                reply,
            },
            private,
            buf: Vec::new(),
            out: Vec::new(),
        }
    }

    /// Bytes to send now (empty when there are none).
    pub fn take_transmit(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Take bytes the peer sent; returns whether the handshake is done. After an error or
    /// `Done`, the handshake is over.
    pub fn handle_input(&mut self, data: &[u8]) -> Result<Progress, MseError> {
        if matches!(self.state, State::Over) {
            return Err(MseError::Finished);
        }
        self.buf.extend_from_slice(data);
        loop {
            let state = std::mem::replace(&mut self.state, State::Over);
            match self.step(state)? {
                Step::Continue(next) => self.state = next,
                Step::Wait(same) => {
                    self.state = same;
                    return Ok(Progress::NeedMore);
                }
                Step::Done(done) => return Ok(Progress::Done(done)),
            }
        }
    }
}

enum Step {
    /// Moved on; try the next stage with what is buffered.
    Continue(State),
    /// Not enough bytes for this stage yet.
    Wait(State),
    Done(Box<Established>),
}

impl MseHandshake {
    fn step(&mut self, state: State) -> Result<Step, MseError> {
        match state {
            State::InitYb {
                info_hash,
                provide,
                ia,
                encrypted_pad_len,
            } => {
                let Some(theirs) = self.take_key() else {
                    return Ok(Step::Wait(State::InitYb {
                        info_hash,
                        provide,
                        ia,
                        encrypted_pad_len,
                    }));
                };
                let secret = shared_secret(&self.private, &theirs)?;
                let mut ciphers = Ciphers {
                    encrypt: rc4_for(b"keyA", &secret, &info_hash),
                    decrypt: rc4_for(b"keyB", &secret, &info_hash),
                };
                // What the responder's VC looks like encrypted: the mark to sync on.
                let mut marker = VC;
                rc4_for(b"keyB", &secret, &info_hash).apply_keystream(&mut marker);
                self.out.extend_from_slice(&hash(&[b"req1", &secret]));
                self.out
                    .extend_from_slice(&xor20(&skey_hash(&info_hash), &hash(&[b"req3", &secret])));
                let start = self.out.len();
                self.out.extend_from_slice(&VC);
                self.out.extend_from_slice(&provide.0.to_be_bytes());
                // Both at most 512 / MAX_INITIAL_PAYLOAD (constructor), so they fit in u16.
                self.out
                    .extend_from_slice(&(encrypted_pad_len as u16).to_be_bytes());
                self.out.resize(self.out.len() + encrypted_pad_len, 0);
                self.out.extend_from_slice(&(ia.len() as u16).to_be_bytes());
                self.out.extend_from_slice(&ia);
                ciphers.encrypt.apply_keystream(&mut self.out[start..]);
                Ok(Step::Continue(State::InitVc {
                    info_hash,
                    provide,
                    marker,
                    ciphers,
                }))
            }
            State::InitVc {
                info_hash,
                provide,
                marker,
                mut ciphers,
            } => match find(&self.buf, &marker, MAX_PAD) {
                Some(at) => {
                    // Keep the decrypting stream in step: it has now covered the VC.
                    let mut vc = VC;
                    ciphers.decrypt.apply_keystream(&mut vc);
                    self.buf.drain(..at + VC.len());
                    Ok(Step::Continue(State::InitSelect {
                        info_hash,
                        provide,
                        ciphers,
                    }))
                }
                None if self.buf.len() >= MAX_PAD + VC.len() => Err(MseError::VcNotFound),
                None => Ok(Step::Wait(State::InitVc {
                    info_hash,
                    provide,
                    marker,
                    ciphers,
                })),
            },
            State::InitSelect {
                info_hash,
                provide,
                mut ciphers,
            } => {
                if self.buf.len() < 6 {
                    return Ok(Step::Wait(State::InitSelect {
                        info_hash,
                        provide,
                        ciphers,
                    }));
                }
                ciphers.decrypt.apply_keystream(&mut self.buf[..6]);
                let head: Vec<u8> = self.buf.drain(..6).collect();
                let select = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
                let method = match select {
                    0x01 => Method::Plaintext,
                    0x02 => Method::Rc4,
                    other => return Err(MseError::BadSelect(other)),
                };
                if !provide.contains(method) {
                    return Err(MseError::BadSelect(select));
                }
                let len = usize::from(u16::from_be_bytes([head[4], head[5]]));
                if len > MAX_PAD {
                    return Err(MseError::PadTooLong(len));
                }
                Ok(Step::Continue(State::InitPadD {
                    info_hash,
                    method,
                    ciphers,
                    len,
                }))
            }
            State::InitPadD {
                info_hash,
                method,
                mut ciphers,
                len,
            } => {
                if self.buf.len() < len {
                    return Ok(Step::Wait(State::InitPadD {
                        info_hash,
                        method,
                        ciphers,
                        len,
                    }));
                }
                ciphers.decrypt.apply_keystream(&mut self.buf[..len]);
                self.buf.drain(..len);
                let initial = std::mem::take(&mut self.buf);
                Ok(Step::Done(Box::new(finish(
                    method, info_hash, ciphers, initial, 0,
                ))))
            }
            State::RespYa {
                accept,
                lookup,
                encrypted_pad_len,
                reply,
            } => {
                let Some(theirs) = self.take_key() else {
                    return Ok(Step::Wait(State::RespYa {
                        accept,
                        lookup,
                        encrypted_pad_len,
                        reply,
                    }));
                };
                let secret = shared_secret(&self.private, &theirs)?;
                self.out.extend_from_slice(&reply);
                Ok(Step::Continue(State::RespReq1 {
                    accept,
                    lookup,
                    encrypted_pad_len,
                    secret,
                }))
            }
            State::RespReq1 {
                accept,
                lookup,
                encrypted_pad_len,
                secret,
            } => match find(&self.buf, &hash(&[b"req1", &secret]), MAX_PAD) {
                Some(at) => {
                    self.buf.drain(..at + 20);
                    Ok(Step::Continue(State::RespReq2 {
                        accept,
                        lookup,
                        encrypted_pad_len,
                        secret,
                    }))
                }
                // MSE spec: "B ... scan for HASH('req1', S) ... within 532 bytes past Ya".
                None if self.buf.len() >= MAX_PAD + 20 => Err(MseError::SyncNotFound),
                None => Ok(Step::Wait(State::RespReq1 {
                    accept,
                    lookup,
                    encrypted_pad_len,
                    secret,
                })),
            },
            State::RespReq2 {
                accept,
                lookup,
                encrypted_pad_len,
                secret,
            } => {
                if self.buf.len() < 20 {
                    return Ok(Step::Wait(State::RespReq2 {
                        accept,
                        lookup,
                        encrypted_pad_len,
                        secret,
                    }));
                }
                let mut got = [0u8; 20];
                got.copy_from_slice(&self.buf[..20]);
                self.buf.drain(..20);
                let wanted = xor20(&got, &hash(&[b"req3", &secret]));
                let info_hash = lookup(&wanted).ok_or(MseError::UnknownTorrent)?;
                let ciphers = Ciphers {
                    decrypt: rc4_for(b"keyA", &secret, &info_hash),
                    encrypt: rc4_for(b"keyB", &secret, &info_hash),
                };
                Ok(Step::Continue(State::RespProvide {
                    accept,
                    info_hash,
                    encrypted_pad_len,
                    ciphers,
                }))
            }
            State::RespProvide {
                accept,
                info_hash,
                encrypted_pad_len,
                mut ciphers,
            } => {
                // VC (8), crypto_provide (4), len(PadC) (2).
                if self.buf.len() < 14 {
                    return Ok(Step::Wait(State::RespProvide {
                        accept,
                        info_hash,
                        encrypted_pad_len,
                        ciphers,
                    }));
                }
                ciphers.decrypt.apply_keystream(&mut self.buf[..14]);
                let head: Vec<u8> = self.buf.drain(..14).collect();
                if head[..8] != VC {
                    return Err(MseError::BadVerificationConstant);
                }
                let offered = u32::from_be_bytes([head[8], head[9], head[10], head[11]]);
                let both = offered & accept.0;
                let method = if both & Method::Rc4.bit() != 0 {
                    Method::Rc4
                } else if both & Method::Plaintext.bit() != 0 {
                    Method::Plaintext
                } else {
                    return Err(MseError::NoCommonMethod {
                        offered,
                        accepted: accept.0,
                    });
                };
                let len = usize::from(u16::from_be_bytes([head[12], head[13]]));
                if len > MAX_PAD {
                    return Err(MseError::PadTooLong(len));
                }
                Ok(Step::Continue(State::RespPadC {
                    method,
                    info_hash,
                    encrypted_pad_len,
                    ciphers,
                    len,
                }))
            }
            State::RespPadC {
                method,
                info_hash,
                encrypted_pad_len,
                mut ciphers,
                len,
            } => {
                if self.buf.len() < len + 2 {
                    return Ok(Step::Wait(State::RespPadC {
                        method,
                        info_hash,
                        encrypted_pad_len,
                        ciphers,
                        len,
                    }));
                }
                ciphers.decrypt.apply_keystream(&mut self.buf[..len + 2]);
                let ia_len = usize::from(u16::from_be_bytes([self.buf[len], self.buf[len + 1]]));
                self.buf.drain(..len + 2);
                if ia_len > MAX_INITIAL_PAYLOAD {
                    return Err(MseError::InitialPayloadTooLong(ia_len));
                }
                Ok(Step::Continue(State::RespIa {
                    method,
                    info_hash,
                    encrypted_pad_len,
                    ciphers,
                    len: ia_len,
                }))
            }
            State::RespIa {
                method,
                info_hash,
                encrypted_pad_len,
                mut ciphers,
                len,
            } => {
                if self.buf.len() < len {
                    return Ok(Step::Wait(State::RespIa {
                        method,
                        info_hash,
                        encrypted_pad_len,
                        ciphers,
                        len,
                    }));
                }
                // The initial payload is always RC4 (the initiator could not know the method).
                ciphers.decrypt.apply_keystream(&mut self.buf[..len]);
                let start = self.out.len();
                self.out.extend_from_slice(&VC);
                self.out.extend_from_slice(&method.bit().to_be_bytes());
                // At most 512 (constructor).
                self.out
                    .extend_from_slice(&(encrypted_pad_len as u16).to_be_bytes());
                self.out.resize(self.out.len() + encrypted_pad_len, 0);
                ciphers.encrypt.apply_keystream(&mut self.out[start..]);
                let initial = std::mem::take(&mut self.buf);
                Ok(Step::Done(Box::new(finish(
                    method, info_hash, ciphers, initial, len,
                ))))
            }
            State::Over => Err(MseError::Finished),
        }
    }

    /// The peer's public key, once all 96 bytes are in.
    fn take_key(&mut self) -> Option<[u8; KEY_LEN]> {
        let key: [u8; KEY_LEN] = self.buf.get(..KEY_LEN)?.try_into().ok()?;
        self.buf.drain(..KEY_LEN);
        Some(key)
    }
}

/// The handshake's result; `initial[decrypted..]` is payload received past the handshake, in
/// the chosen method (`initial[..decrypted]` is already clear).
fn finish(
    method: Method,
    info_hash: InfoHash,
    mut ciphers: Ciphers,
    mut initial: Vec<u8>,
    decrypted: usize,
) -> Established {
    let ciphers = match method {
        Method::Rc4 => {
            ciphers.decrypt.apply_keystream(&mut initial[decrypted..]);
            Some(ciphers)
        }
        Method::Plaintext => None,
    };
    Established {
        method,
        info_hash,
        ciphers,
        initial,
    }
}

static PRIME: std::sync::LazyLock<BigUint> = std::sync::LazyLock::new(|| {
    // A constant of valid hex digits.
    BigUint::parse_bytes(PRIME_HEX, 16).expect("the MSE prime is valid hex")
});

fn to_key_bytes(n: &BigUint) -> [u8; KEY_LEN] {
    let bytes = n.to_bytes_be();
    let mut out = [0u8; KEY_LEN];
    // Below the 768-bit prime, so at most 96 bytes.
    out[KEY_LEN - bytes.len()..].copy_from_slice(&bytes);
    out
}

fn public_key(private: &BigUint) -> [u8; KEY_LEN] {
    to_key_bytes(&BigUint::from(GENERATOR).modpow(private, &PRIME))
}

/// `S = Y^x mod P`, refusing the degenerate keys 0, 1 and P-1 (and anything ≥ P), which would
/// make the secret guessable.
fn shared_secret(private: &BigUint, theirs: &[u8; KEY_LEN]) -> Result<[u8; KEY_LEN], MseError> {
    let y = BigUint::from_bytes_be(theirs);
    let one = BigUint::from(1u32);
    if y <= one || y >= &*PRIME - &one {
        return Err(MseError::BadPublicKey);
    }
    Ok(to_key_bytes(&y.modpow(private, &PRIME)))
}

fn hash(parts: &[&[u8]]) -> [u8; 20] {
    let mut h = Sha1::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

fn xor20(a: &[u8; 20], b: &[u8; 20]) -> [u8; 20] {
    std::array::from_fn(|i| a[i] ^ b[i])
}

/// RC4 keyed with `HASH(name, S, SKEY)`, its first 1024 bytes discarded (MSE spec).
fn rc4_for(name: &[u8], secret: &[u8; KEY_LEN], info_hash: &InfoHash) -> Rc4 {
    let key = hash(&[name, secret, &info_hash.0]);
    // RC4 takes keys of 1 to 256 bytes; this one is 20.
    let mut rc4 = Rc4::new_from_slice(&key).expect("a 20-byte RC4 key");
    let mut discard = [0u8; RC4_DISCARD];
    rc4.apply_keystream(&mut discard);
    rc4
}

/// The first position `≤ max_start` where `needle` occurs in `haystack`.
fn find(haystack: &[u8], needle: &[u8], max_start: usize) -> Option<usize> {
    haystack
        .windows(needle.len())
        .take(max_start + 1)
        .position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TORRENT: InfoHash = InfoHash([0xAA; 20]);
    /// Stands in for our BitTorrent handshake as initial payload.
    const IA: [u8; 68] = [0x13; 68];

    fn secrets(key: u8, pad: usize, encrypted_pad_len: usize) -> Secrets {
        Secrets {
            private_key: [key; 20],
            pad: vec![0x5A; pad],
            encrypted_pad_len,
        }
    }

    fn knows_torrent() -> SkeyLookup {
        Box::new(|h| (*h == skey_hash(&TORRENT)).then_some(TORRENT))
    }

    /// Shuttle bytes between the two sides, `chunk` bytes per delivery, until both are done.
    fn run(
        mut a: MseHandshake,
        mut b: MseHandshake,
        chunk: usize,
    ) -> Result<(Established, Established), MseError> {
        let (mut a_done, mut b_done) = (None, None);
        for _ in 0..100_000 {
            if a_done.is_some() && b_done.is_some() {
                break;
            }
            let to_b = a.take_transmit();
            for c in to_b.chunks(chunk) {
                if let Progress::Done(d) = b.handle_input(c)? {
                    b_done = Some(*d);
                }
            }
            let to_a = b.take_transmit();
            for c in to_a.chunks(chunk) {
                if let Progress::Done(d) = a.handle_input(c)? {
                    a_done = Some(*d);
                }
            }
        }
        Ok((
            a_done.expect("initiator done"),
            b_done.expect("responder done"),
        ))
    }

    fn both_ways(a: &mut Established, b: &mut Established) {
        let (ac, bc) = (a.ciphers.as_mut().unwrap(), b.ciphers.as_mut().unwrap());
        let mut msg = b"the payload goes both ways".to_vec();
        ac.encrypt.apply_keystream(&mut msg);
        assert_ne!(&msg[..], b"the payload goes both ways");
        bc.decrypt.apply_keystream(&mut msg);
        assert_eq!(&msg[..], b"the payload goes both ways");
        bc.encrypt.apply_keystream(&mut msg);
        ac.decrypt.apply_keystream(&mut msg);
        assert_eq!(&msg[..], b"the payload goes both ways");
    }

    #[test]
    fn rc4_is_chosen_when_both_offer_it_at_every_pad_size_and_split() {
        for (pad, epad) in [(0, 0), (512, 512), (17, 300)] {
            for chunk in [1, 7, 96, 4096] {
                let a = MseHandshake::initiator(
                    TORRENT,
                    CryptoMethods::BOTH,
                    &IA,
                    secrets(1, pad, epad),
                );
                let b = MseHandshake::responder(
                    CryptoMethods::BOTH,
                    knows_torrent(),
                    secrets(2, pad, epad),
                );
                let (mut a, mut b) = run(a, b, chunk).unwrap();
                assert_eq!((a.method, b.method), (Method::Rc4, Method::Rc4));
                assert_eq!((a.info_hash, b.info_hash), (TORRENT, TORRENT));
                assert_eq!(b.initial, IA, "the initial payload is handed on, decrypted");
                assert!(a.initial.is_empty());
                both_ways(&mut a, &mut b);
            }
        }
    }

    #[test]
    fn plaintext_is_chosen_when_the_responder_accepts_only_plaintext() {
        let a = MseHandshake::initiator(TORRENT, CryptoMethods::BOTH, &IA, secrets(1, 3, 0));
        let b =
            MseHandshake::responder(CryptoMethods::PLAINTEXT, knows_torrent(), secrets(2, 0, 9));
        let (a, b) = run(a, b, 50).unwrap();
        assert_eq!((a.method, b.method), (Method::Plaintext, Method::Plaintext));
        assert!(a.ciphers.is_none() && b.ciphers.is_none());
        // The initial payload was RC4-encrypted on the wire all the same.
        assert_eq!(b.initial, IA);
    }

    #[test]
    fn an_empty_initial_payload_and_payload_past_the_handshake() {
        let a = MseHandshake::initiator(TORRENT, CryptoMethods::RC4, &[], secrets(1, 0, 0));
        let mut b = MseHandshake::responder(CryptoMethods::BOTH, knows_torrent(), secrets(2, 0, 0));
        let mut a = a;
        b.handle_input(&a.take_transmit()).unwrap();
        a.handle_input(&b.take_transmit()).unwrap();
        let Progress::Done(mut b_done) = b.handle_input(&a.take_transmit()).unwrap() else {
            panic!("responder not done");
        };
        assert!(b_done.initial.is_empty());
        // The responder's first payload travels in the same read as its step 4.
        let mut wire = b.take_transmit();
        let mut hello = b"hello".to_vec();
        b_done
            .ciphers
            .as_mut()
            .unwrap()
            .encrypt
            .apply_keystream(&mut hello);
        wire.extend_from_slice(&hello);
        let Progress::Done(a_done) = a.handle_input(&wire).unwrap() else {
            panic!("initiator not done");
        };
        assert_eq!(a_done.initial, b"hello");
    }

    #[test]
    fn an_initial_payload_followed_by_more_bytes_in_plaintext() {
        let mut a =
            MseHandshake::initiator(TORRENT, CryptoMethods::PLAINTEXT, &IA, secrets(1, 0, 0));
        let mut b = MseHandshake::responder(CryptoMethods::BOTH, knows_torrent(), secrets(2, 0, 0));
        b.handle_input(&a.take_transmit()).unwrap();
        a.handle_input(&b.take_transmit()).unwrap();
        let mut wire = a.take_transmit();
        wire.extend_from_slice(b"more");
        let Progress::Done(b_done) = b.handle_input(&wire).unwrap() else {
            panic!("responder not done");
        };
        assert_eq!(b_done.method, Method::Plaintext);
        assert_eq!(&b_done.initial[..68], &IA);
        assert_eq!(&b_done.initial[68..], b"more");
    }

    #[test]
    fn garbage_instead_of_the_sync_hash_fails_after_the_bounded_scan() {
        let mut b = MseHandshake::responder(CryptoMethods::BOTH, knows_torrent(), secrets(2, 0, 0));
        let ya = public_key(&BigUint::from(12345u32));
        assert!(matches!(b.handle_input(&ya), Ok(Progress::NeedMore)));
        assert_eq!(b.take_transmit().len(), KEY_LEN, "Yb goes out after Ya");
        // 531 bytes past Ya could still hold the hash at 511; the 532nd settles it.
        assert!(matches!(
            b.handle_input(&[0x77; 531]),
            Ok(Progress::NeedMore)
        ));
        assert!(matches!(
            b.handle_input(&[0x77]),
            Err(MseError::SyncNotFound)
        ));
        assert!(matches!(b.handle_input(&[0]), Err(MseError::Finished)));
    }

    #[test]
    fn garbage_instead_of_the_vc_fails_after_the_bounded_scan() {
        let mut a = MseHandshake::initiator(TORRENT, CryptoMethods::BOTH, &IA, secrets(1, 0, 0));
        let yb = public_key(&BigUint::from(999u32));
        assert!(matches!(a.handle_input(&yb), Ok(Progress::NeedMore)));
        assert!(matches!(
            a.handle_input(&[0x11; 519]),
            Ok(Progress::NeedMore)
        ));
        assert!(matches!(a.handle_input(&[0x11]), Err(MseError::VcNotFound)));
    }

    #[test]
    fn degenerate_public_keys_are_refused() {
        for y in [BigUint::from(0u32), BigUint::from(1u32), &*PRIME - 1u32] {
            let mut b =
                MseHandshake::responder(CryptoMethods::BOTH, knows_torrent(), secrets(2, 0, 0));
            let r = b.handle_input(&to_key_bytes(&y));
            assert!(matches!(r, Err(MseError::BadPublicKey)), "{r:?}");
        }
    }

    #[test]
    fn methods_we_refuse_end_the_handshake() {
        // We require RC4; the peer offers plaintext only.
        let a = MseHandshake::initiator(TORRENT, CryptoMethods::PLAINTEXT, &IA, secrets(1, 0, 0));
        let b = MseHandshake::responder(CryptoMethods::RC4, knows_torrent(), secrets(2, 0, 0));
        let r = run(a, b, 4096);
        assert!(
            matches!(
                r,
                Err(MseError::NoCommonMethod {
                    offered: 1,
                    accepted: 2
                })
            ),
            "{:?}",
            r.err()
        );
        // We accept plaintext only; the peer insists on RC4.
        let a = MseHandshake::initiator(TORRENT, CryptoMethods::RC4, &IA, secrets(1, 0, 0));
        let b =
            MseHandshake::responder(CryptoMethods::PLAINTEXT, knows_torrent(), secrets(2, 0, 0));
        assert!(matches!(
            run(a, b, 4096),
            Err(MseError::NoCommonMethod { .. })
        ));
    }

    #[test]
    fn a_select_we_did_not_offer_is_refused() {
        // A responder that (wrongly) answers plaintext to an RC4-only offer.
        let mut a = MseHandshake::initiator(TORRENT, CryptoMethods::RC4, &IA, secrets(1, 0, 0));
        let mut b = MseHandshake::responder(CryptoMethods::BOTH, knows_torrent(), secrets(2, 0, 0));
        b.handle_input(&a.take_transmit()).unwrap();
        a.handle_input(&b.take_transmit()).unwrap();
        let Progress::Done(_) = b.handle_input(&a.take_transmit()).unwrap() else {
            panic!("responder not done");
        };
        // Rewrite its step 4 with the keystream: VC, select 0x01, no pad.
        let mut wire = b.take_transmit();
        let keystream: Vec<u8> = wire
            .iter()
            .zip([0u8; 8].iter().chain(&[0, 0, 0, 2, 0, 0]))
            .map(|(c, p)| c ^ p)
            .collect();
        let forged = [0u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0];
        for (w, (k, p)) in wire.iter_mut().zip(keystream.iter().zip(forged)) {
            *w = k ^ p;
        }
        assert!(matches!(a.handle_input(&wire), Err(MseError::BadSelect(1))));
    }

    #[test]
    fn an_unknown_torrent_is_refused() {
        let a = MseHandshake::initiator(
            InfoHash([0xBB; 20]),
            CryptoMethods::BOTH,
            &IA,
            secrets(1, 0, 0),
        );
        let b = MseHandshake::responder(CryptoMethods::BOTH, knows_torrent(), secrets(2, 0, 0));
        assert!(matches!(run(a, b, 4096), Err(MseError::UnknownTorrent)));
    }

    #[test]
    fn oversized_pads_and_initial_payloads_are_refused() {
        // A responder's own view: feed a forged step 3 from a real initiator's keys.
        let mut a = MseHandshake::initiator(TORRENT, CryptoMethods::BOTH, &IA, secrets(1, 0, 0));
        let mut b = MseHandshake::responder(CryptoMethods::BOTH, knows_torrent(), secrets(2, 0, 0));
        b.handle_input(&a.take_transmit()).unwrap();
        a.handle_input(&b.take_transmit()).unwrap();
        let step3 = a.take_transmit();
        // req1 (20), req2^req3 (20), then encrypted VC(8) provide(4) len(PadC)(2).
        let mut forged = step3[..40 + 14].to_vec();
        let ks: Vec<u8> = forged[40..]
            .iter()
            .zip([0u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0])
            .map(|(c, p)| c ^ p)
            .collect();
        for (i, p) in [0u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0x02, 0x01]
            .iter()
            .enumerate()
        {
            forged[40 + i] = ks[i] ^ p; // len(PadC) = 513
        }
        assert!(matches!(
            b.handle_input(&forged),
            Err(MseError::PadTooLong(513))
        ));
    }

    /// Our DH and key schedule against an independent computation (Python's `pow` and a
    /// textbook RC4, run once by hand): private keys 0x01×20 and 0x02×20, SKEY 0xAA×20.
    #[test]
    fn known_answers_for_fixed_private_keys() {
        let xa = BigUint::from_bytes_be(&[1; 20]);
        let xb = BigUint::from_bytes_be(&[2; 20]);
        let (ya, yb) = (public_key(&xa), public_key(&xb));
        assert_eq!(hex::encode(&ya[..8]), "d0e3956c8bb74015");
        let s = shared_secret(&xa, &yb).unwrap();
        assert_eq!(s, shared_secret(&xb, &ya).unwrap());
        assert_eq!(hex::encode(&s[..8]), "478531421d985de7");
        assert_eq!(hex::encode(&s[88..]), "c7cbe8fab193d842");
        assert_eq!(
            hex::encode(hash(&[b"req1", &s])),
            "0a6d483c3bc61484a210fa0f37d99062fd569483"
        );
        let mut vc = VC;
        rc4_for(b"keyB", &s, &TORRENT).apply_keystream(&mut vc);
        assert_eq!(hex::encode(vc), "4e1a0ab34843e109");
    }
}
