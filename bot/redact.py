"""Mask secrets people paste (passwords, PINs, one-time codes, tokens, keys) before text is stored or sent."""

from __future__ import annotations

import re

MASK = "[redacted]"

# Deliberately not caught (tests/test_redact.py::test_known_gaps holds the first three):
# - a lower-case password that reads like a state ("my password is tornado": -ado, like caducado);
# - all but the first word of an unquoted passphrase ("purple monkey dishwasher" keeps "monkey dishwasher");
# - a value named before its keyword other than as "<value> is my password" and its translations;
# - a lone password or code with no keyword and no known token shape ("Hunter2", "482913" on their own).
# The other way round, a describing word the lists below lack is masked ("my password is Okta-managed").

# Every search below is bounded (a window after a keyword, a value length, a fixed number of words), and no
# pattern nests one repetition inside another, so redaction stays linear in the length of the text.
_WINDOW = 200  # how far after a keyword its value may end
_MAX_VALUE = 256
_MAX_QUOTED = 100
_LINK_WORDS = 4  # "the password [for my webex account] is ..."
_MAX_DIGITS = 16
_MAX_PASSES = 4  # a pass that masks a word can expose a value the word was hiding; see redact()

# Shapes that are secrets wherever they appear. Where a pattern has a group named "secret" only that is
# masked, so the helpdesk still sees what was pasted ("-----BEGIN RSA PRIVATE KEY-----[redacted]-----END ...",
# "Bearer [redacted]"). The flag says the secret must hold a digit and a letter, which real tokens do and
# words such as "authentication" or ServiceDiscoveryCannotConnectToCucmServer (a Webex error name) do not.
_SHAPES: tuple[tuple[re.Pattern[str], bool], ...] = (
    # A key cut off before its END line is masked to the end of the text.
    (
        re.compile(
            r"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----(?P<secret>[\s\S]*?)"
            r"(?=-----END [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----|\Z)"
        ),
        True,
    ),
    # JWTs: base64url JSON header and payload, both starting "eyJ" ('{"'), then the signature.
    (re.compile(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_.-]{2,}"), True),
    (re.compile(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"), True),
    # GitHub, GitLab, npm, PyPI, Slack, Google, Stripe, OpenAI-style, SendGrid and webhook-signing keys.
    (
        re.compile(
            r"(?<![A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"
            r"|glpat-[A-Za-z0-9_-]{20,}|npm_[A-Za-z0-9]{30,}|pypi-[A-Za-z0-9_-]{40,}|whsec_[A-Za-z0-9]{10,})"
        ),
        True,
    ),
    (re.compile(r"(?<![A-Za-z0-9-])(?:xox[abposre]|xapp)-[A-Za-z0-9-]{10,}"), True),
    (
        re.compile(
            r"(?<![A-Za-z0-9_-])(?:AIza[A-Za-z0-9_-]{35}|(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{10,}"
            r"|sk-[A-Za-z0-9_-]{20,}|SG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,})"
        ),
        True,
    ),
    # AWS access key ids (the secret key itself has no prefix: it is caught by its keyword).
    (re.compile(r"(?<![A-Za-z0-9])(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?![A-Za-z0-9])"), True),
    # Webhook URLs whose path is the credential.
    (
        re.compile(r"(?i)\bhooks\.slack\.com/(?:services|workflows|triggers)/(?P<secret>[A-Za-z0-9/_-]{8,})"),
        True,
    ),
    (re.compile(r"(?i)\bwebexapis\.com/v1/webhooks/incoming/(?P<secret>[A-Za-z0-9_=-]{16,})"), True),
    # HTTP authorisation: "Bearer x", "Authorization: Basic x".
    (
        re.compile(
            r"(?i)(?<![A-Za-z0-9])(?:bearer|basic|token|digest)[^\S\n]{1,3}"
            r"(?P<secret>[A-Za-z0-9._~+/-]{12,}=*)"
        ),
        True,
    ),
    (re.compile(r"(?i)\bauthorization[^\S\n]*[:=][^\S\n]*(?P<secret>[A-Za-z0-9._~+/-]{8,}=*)"), True),
    # The password in a URL's user info: postgres://app:S3cret@db, https://alice:pw@intranet.
    (
        re.compile(
            r"(?i)(?<![A-Za-z0-9+.-])[a-z][a-z0-9+.-]{1,20}://[^\s:/@]{1,64}:(?P<secret>[^\s/@]{1,128})@"
        ),
        False,
    ),
    # Credentials in a query string or fragment.
    (
        re.compile(
            r"(?i)[?&#](?:access_token|id_token|refresh_token|token|api_?key|key|password|passwd|pwd|secret"
            r"|client_secret|sig|signature|code|auth)=(?P<secret>[^&#\s]{4,})"
        ),
        True,
    ),
    # Long opaque strings (Webex access tokens, hex secrets) anywhere.
    (re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9]{40,}[A-Za-z0-9_-]*"), True),
)

# Words that announce a value. The families decide what a value must look like:
#   token: an API key or access token (a long string with a digit and a letter);
#   otp:   a code whose name says it is secret (verification code, Bestätigungscode, code de vérification);
#   pin:   digits only;
#   pw:    a password, which may be any word ("my password is banana");
#   code:  a bare "code", which is usually an error code ("code 603") and needs more evidence;
#   weak:  "pass", "clave", "credentials", often other words ("boarding pass", "la clave es reiniciar").
# Within a family longer names come first, since the first alternative that matches wins. (?<![^\W_]) and
# (?![^\W_]): not glued to a letter or digit ("db_password" and "user/pass" count, "Fehlercode" is no "code").
_KEYWORD = re.compile(
    r"(?i)(?:(?P<token>(?<![^\W_])(?:x-api-key|api[ _-]?(?:key|token|secret)|apikey|access[ _-]?key[ _-]?id"
    r"|access[ _-]?(?:token|key)|secret[ _-]?access[ _-]?key|secret[ _-]?key|auth[ _-]?token|authtoken"
    r"|refresh[ _-]?token|id[ _-]?token|bot[ _-]?token|client[ _-]?secret|private[ _-]?key"
    r"|signing[ _-]?secret|webhook[ _-]?secret|app[ _-]?secret|api-schl(?:ü|ue)ssel"
    r"|cl[ée] (?:d['’]|de l['’])?api|cl[ée] secr[èe]te"
    r"|clave (?:de )?api|clave secreta|chave (?:de )?api|chave secreta|chiave (?:di )?api|chiave segreta"
    r"|token|secret))"
    r"|(?P<otp>(?<![^\W_])(?:one[ -]time[ -](?:code|password|passcode|pin|token)"
    r"|(?:verification|confirmation|security|access|login|log-in|sign-in|signin|auth|authentication"
    r"|authenticator|2fa|mfa|otp|sms|backup|recovery|activation|unlock|reset|one-time)[ -]code"
    r"|(?:best(?:ä|ae)tigungs|sicherheits|einmal|zugangs|anmelde|verifizierungs|freischalt|aktivierungs"
    r"|wiederherstellungs|sms-|login-|2fa-|mfa-|backup-)code|einmal-?(?:passwort|kennwort)"
    r"|code (?:de v[ée]rification|de confirmation|de s[ée]curit[ée]|d['’]acc[èe]s|de connexion|de validation"
    r"|d['’]authentification|d['’]activation|[àa] usage unique|unique|sms|otp)"
    r"|c[oó]digo (?:de verificaci[oó]n|de confirmaci[oó]n|de seguridad|de acceso|de autenticaci[oó]n"
    r"|de activaci[oó]n|de un solo uso|de verifica[cç][aã]o|de confirma[cç][aã]o|de seguran[cç]a|de acesso"
    r"|de autentica[cç][aã]o|de ativa[cç][aã]o|sms|otp)"
    r"|codice (?:di verifica|di conferma|di sicurezza|di accesso|di autenticazione|di attivazione|monouso"
    r"|usa e getta|sms|otp)"
    r"|(?-i:TAN|mTAN|pushTAN|smsTAN|chipTAN)|otp|2fa|mfa))"
    r"|(?P<pin>(?<![^\W_])(?:pin(?:[ -]?(?:code|number|nummer|nr))?|code[ -]pin|c[oó]digo pin|codice pin"
    r"|code secret|code confidentiel|n[uú]m[eé]ro pin|numero pin|geheimzahl|puk))"
    r"|(?P<pw>(?:pass(?:word|wort|phrase|code)|kennwort|(?<![^\W_])(?:passwd|pwd|pword|pw|p/w|mdp|senha"
    r"|contrase(?:ñ|n)a|mot[ -]de[ -]passe|palavra[ -]passe|parola d['’]ordine)))"
    r"|(?P<code>(?<![^\W_])(?:code|c[oó]digo|codice))"
    r"|(?P<weak>(?<![^\W_])(?:pass|clave|credentials|creds|identifiants|credenciales|credenciais"
    r"|credenziali|zugangsdaten))"
    r")(?![^\W_])"
)

_SPACES = re.compile(r"[^\S\n]*")
# "password: x", "pw=x", "Password - x", "password -> x"; a dash needs a space after it ("password-reset" is a
# word).
_SYMBOL = re.compile(r"(?::=|==|=>|->|[:=→]|[-–—]{1,2}(?=\s))\s{0,8}")
_VERB = re.compile(
    r"(?i)(?:is set to|was set to|has been set to|(?:is|was|has been|got) (?:changed|reset|updated) to"
    r"|should be|would be|will be|must be|is|was|['’]s|equals"
    r"|lautet|lautete|ist|war|hei(?:ß|ss)t|w(?:ä|ae)re|wurde auf"
    r"|c['’]est|est|[ée]tait|sera|serait"
    r"|es|era|ser[áa]|ser[íi]a|é|è|e['’]|sar[àa]|sarebbe|seria)"
    r"(?![^\W_])[^\S\n]*"
)
# "I set the password to X": only a value that looks like one
_TO = re.compile(r"(?i)(?:to|auf)(?![^\W_])[^\S\n]*")
_FILLER = re.compile(
    r"(?i)(?:definitely|really|actually|literally|now|currently|still|just|basically|simply|probably"
    r"|apparently|supposedly|honestly|obviously|btw|here|always|again"
    r"|wirklich|eigentlich|jetzt|nun|gerade|aktuell|momentan|immer noch|noch|definitiv|leider"
    r"|(?:ü|ue)brigens|hier"
    r"|vraiment|maintenant|actuellement|toujours|bien|encore|donc|ici"
    r"|ahora|actualmente|realmente|todav[íi]a|a[úu]n|ya|aqu[íi]"
    r"|agora|atualmente|ainda|mesmo|aqui"
    r"|davvero|ora|adesso|attualmente|ancora|proprio)"
    r"(?![^\W_])[^\S\n]*"
)
# Adverbs in general: "the password is obviously X". Not "-ly" alone, which would take butterfly and family.
_ADVERB = re.compile(r"[a-zà-ÿ]{2,}(?:ally|ely|tly|sly|bly|mente|ement|emment|amment)[^\S\n]+")
# "the password [for the VPN] is", "the code [they sent me] is", "le code [que j'ai reçu] est"
_LINK = re.compile(
    r"(?i)(?:for|f(?:ü|ue)r|pour|para|per|of|on|to|at|in|im|am|from|de|del|da|do|di|du|des|della|dello"
    r"|zum|zur|vom|i|you|we|they|that|which|ich|wir|que|qui|che|eu|io)(?![^\W_])[^\S\n]*"
)
_POST_ADJECTIVE = re.compile(
    r"(?i)[^\S\n]+(?:nova|novo|nuova|nuovo|nueva|nuevo|nouveau|nouvelle|actual|actuel|actuelle|atual|attuale"
    r"|neu|neues|alt|altes|aktuell|aktuelles|vecchia|vecchio|antigua|antiguo|antiga|antigo|ancien|ancienne"
    r"|temporaire|provisoire|temporal|provisional|tempor[áa]ria|provis[óo]ria|temporanea|provvisoria)"
    r"(?![^\W_])"
)
_LINK_WORD = re.compile(r"[^\s:=,;!?()\[\]\"]{1,60}[^\S\n]*")
_RUN = re.compile(r"\S+")
_NEXT_DIGITS = re.compile(r" [0-9]{2,8}(?![^\W_])")  # "48 29 13", "8123 4567"
_NEXT_DIGIT = re.compile(r" [0-9](?![^\W_])")  # "1 2 3 4"
_DIGITS = re.compile(r"[0-9][0-9-]{0,40}")
_NEXT_WORD = re.compile(r"[^\S\n]*([^\W\d_]+)")
_QUOTES = {'"': '"', "'": "'", "`": "`", "“": "”", "„": "“", "‘": "’", "«": "»", "‚": "‘"}
_LEADING = "([{<\"'`“„‘«‚"
_TRAILING = ".,;:?)]}>\"'`”“’»"
# Things that follow a keyword but are not secrets: links, error codes (1000:1002, 1000/400), ticket numbers,
# values that are already masked by hand.
_HARMLESS = re.compile(
    r"(?i)https?://\S*|www\.\S*|[0-9]{3,4}[:/][0-9]{1,5}|HD-[0-9]{1,9}|[*•.x]{3,}|n/a|n\.a\."
)
# "1000 1", "1000-4", "1000 : 4": Webex's error namespace, typed loosely
_WEBEX_ERROR = re.compile(r"[^\S\n]?[:/-]?[^\S\n]?[0-9]")

# Words that follow "my password is" in a complaint rather than a leak.
_NOT_SECRETS = frozenset(
    # English
    """a an the my your his her its our their this that these those it i me you he she we they who what which
    when where why how not no never none nothing something anything everything same different also too still
    now just only even again already always in on at by for from with without of to into about as than then so
    very really quite rather pretty and or but because since if unless until while though although is was are
    were be been being am do does did done has have had can cannot could should would will might may must
    shall wrong incorrect correct right expired expire expiring expires invalid valid blocked locked unlocked
    reset resetting required rejected refused denied accepted missing empty blank fine ok okay good bad
    changed changing working broken failing failed short long weak strong new old correctly saved stored known
    unknown forgotten forgot lost compromised case-sensitive sensitive set sent supposed needed mandatory
    optional hidden visible shown displayed greyed disabled enabled active inactive protected encrypted synced
    unchanged due temporary default usual standard please see below above attached here there check ask call
    contact use try help definitely probably maybe perhaps mine yours ours theirs one another other
    not-working out-of-date up-to-date self-service secret private confidential sso saml 2fa mfa otp wifi vpn
    email mail sms weird strange fixed pending longer shorter weaker stronger older newer better worse harder
    easier simpler more less similar unclear simple complex complicated easy hard difficult obvious random
    generic unique personal shared common whatever whichever predictable outdated stale gone available
    unavailable useless nonsense dead great perfect null nil error fehler erreur errore erro""".split()
    # German
    + """nicht kein keine keinen nie niemals falsch richtig korrekt inkorrekt abgelaufen ungültig gültig
    gesperrt entsperrt zurückgesetzt geändert neu neues neue alt altes alte zu auch noch schon immer jetzt
    leer weg vergessen verloren unbekannt bekannt gleich dasselbe derselbe dieselbe identisch kaputt
    erforderlich notwendig nötig pflicht teil problem schuld der die das den dem des ein eine einen einem
    einer mein meine meinen dein sein ihr unser es er sie ich wir in im bei für von vom mit ohne auf aus an am
    um über unter nach vor seit ab bis sehr so ziemlich und oder aber weil wenn dass ob wie was wer wo warum
    da dort bitte siehe unten oben anbei sicher unsicher schwach stark lang kurz geheim vertraulich veraltet
    temporär vorläufig standard gut schlecht anders länger kürzer älter einfacher ähnlich mehr
    weniger""".split()
    # French
    + """pas ne plus jamais rien aucun aucune faux fausse incorrecte correcte bon bonne mauvais mauvaise
    erroné erronée expiré expirée invalide valide bloqué bloquée verrouillé verrouillée réinitialisé
    réinitialisée changé changée modifié modifiée oublié oubliée perdu perdue vide nouveau nouvelle ancien
    ancienne trop aussi encore toujours déjà le la les un une des du de mon ma mes ton ta son sa notre votre
    leur ce cet cette ça cela il elle on je tu nous vous ils elles en dans pour par avec sans sur sous chez
    que qui quoi quand comment où bien refusé refusée rejeté périmé périmée désactivé désactivée requis
    requise obligatoire nécessaire même identique différent différente court courte longue faible fort forte
    sécurisé secrète confidentiel temporaire provisoire voir ci-dessous et ou mais car si très""".split()
    # Spanish
    + """nunca nada ninguna ninguno incorrecta incorrecto correcta correcto errónea erróneo erronea equivocada
    equivocado mala malo buena bueno caducada caducado expirada expirado vencida vencido inválida inválido
    invalida válida valida bloqueada bloqueado nueva nuevo vieja viejo antigua antiguo el los las lo unos unas
    mi mis su nuestro nuestra este esta ese esa eso esto yo él ella del para con sin sobre qué cuando como
    donde muy demasiado también todavía aún ya igual misma mismo diferente distinta distinto olvidada olvidado
    perdida perdido vacía vacío débil fuerte segura seguro obligatoria obligatorio necesaria necesario
    requerida larga corta secreta secreto temporal provisional y o pero porque ver abajo""".split()
    # Portuguese
    + """não nenhuma nova novo velha velho antiga antigo expirada expirado vencida vencido bloqueada bloqueado
    válida mesma mesmo igual diferente segura forte errada errado incorreta incorreto correta correto certa
    certo inválido um uma minha meu sua seu nossa nosso isso isto eu ele dos das em no na por com sem quando
    onde muito demais ainda já esquecida vazia fraca obrigatória necessária longa curta temporária provisória
    mas abaixo""".split()
    # Italian
    + """non mai niente nessuna nessun sbagliata sbagliato errata errato corretta corretto giusta giusto
    scaduta scaduto valido invalida invalido bloccata bloccato nuova nuovo vecchia vecchio il gli i uno mia
    mio tua tuo suo questa questo quella quello io lui lei di della dello dei nel nella per senza su che
    quando come dove molto troppo anche ancora già uguale stessa stesso diversa diverso dimenticata persa
    vuota debole sicura obbligatoria lunga segreta segreto temporanea provvisoria cambiata cambiato
    reimpostata resettata sbloccata e ma perché se vedi sotto stata stato stati state sido decir""".split()
)
# Lower-case words with these endings describe a state (expired, gesperrt, blockiert, expiré, caducada,
# scaduta, unusable). A lower-case password with such an ending ("tornado") is therefore kept: see the
# module's tests.
_STATE = re.compile(
    r"[^\W\d_]{3,}(?:ed|able|ible|iert|é|ée|és|ées|ad[ao]s?|id[ao]s?|at[aoie]|ut[aoie]|it[aoie]"
    r"|ig|lich|bar|los)"
    r"|(?:ab|an|auf|aus|ein|zurück|um|weg|vor|nach|zu|mit)?ge[^\W\d_]{2,}(?:t|en)"
)
_ELISIONS = frozenset("l j d qu c n s m t".split())  # l'ancien, j'ai, d'accès, c'est
_UNITS = frozenset(
    """character characters chars char letter letters digit digits number numbers symbol symbols time times
    attempt attempts try tries day days week weeks month months hour hours minute minutes min mins year years
    long zeichen stellen stellig stellige ziffern tag tage tagen mal versuch versuche monat monate stunde
    stunden minute minuten caractère caractères chiffre chiffres jour jours fois tentative tentatives mois
    heure heures carácter caracteres dígito dígitos día días vez veces intento intentos mes meses hora horas
    minutos dia dias vezes tentativa tentativas caratteri cifra cifre giorno giorni volta volte tentativo
    tentativi mese mesi ora ore minuti""".split()
)
# Words before "code" that make it an error or other public code.
_CODE_LABELS = frozenset(
    """error errors err fehler erreur errore erro status exit return response http sip area zip postal post
    country dial dialing dialling qr bar source product promo promotional discount coupon tax reference ref
    reason event fault cause diagnostic tracking order ticket colour color dress morse machine program sample
    example unicode iso sort bank language invalid""".split()
)
_CODE_LABEL_AFTER = re.compile(
    r"(?i)[^\S\n]*(?:d['’]|de |di |do |da |des )?(?:erreur|error|erro|errore|fehler|statut|estado|stato"
    r"|status|[ée]tat|postal|[áa]rea|pa[íi]s|paese|qr|barras)(?![^\W_])"
)
_POSSESSIVES = frozenset(
    "my your our mein meine meinen dein unser mon ma ton notre mi tu nuestro meu minha teu nosso mio mia tuo"
    " nostro".split()
)
_BEFORE_VERBS = frozenset("is was as = ist war als est était es era como é è e' e’".split())
_BEFORE_WORDS = frozenset(
    """my the your our a mein meine meinen das der die den unser mon ma le la notre mi el nuestra o a minha
    meu nossa il lo mio mia nostra new old current actual temporary real neues neue neuer aktuelles nouveau
    nouvelle nueva nuevo nova novo nuova nuovo""".split()
)


def _looks_random(value: str) -> bool:
    return any(c.isdigit() for c in value) and any(c.isalpha() for c in value)


def _is_word(value: str) -> bool:
    return value.replace("'", "").replace("’", "").replace("-", "").isalpha() and value[-1] != "-"


def _secretish(value: str) -> bool:
    """A value with a digit or a symbol: "Hunter2", "p@ss", not "reset" or "e.g."."""
    return any(c.isdigit() or not (c.isalpha() or c in "'’-.") for c in value)


def _describes(value: str) -> bool:
    """A word after "my password is" that says what the password is like (wrong, abgelaufen), not what."""
    word = value.rstrip("!").casefold()
    if word in _NOT_SECRETS:
        return True
    head, apostrophe, tail = word.replace("’", "'").partition("'")
    if apostrophe:  # can't, isn't, l'ancien, j'ai
        return tail in ("t", "s", "") or head in _ELISIONS or head.endswith("n")
    return value[:1].islower() and _STATE.fullmatch(word) is not None


def _followed_by_unit(text: str, end: int, limit: int) -> bool:
    """ "8 characters", "3 times", "4-stellig": a length or a count, not a secret."""
    m = _NEXT_WORD.match(text, end, limit)
    return m is not None and m.group(1).casefold() in _UNITS


def _skip_spaces(text: str, pos: int, limit: int) -> int:
    m = _SPACES.match(text, pos, limit)
    return pos if m is None else m.end()


def _skip_fillers(text: str, pos: int, limit: int) -> int:
    for _ in range(3):
        m = _FILLER.match(text, pos, limit) or _ADVERB.match(text, pos, limit)
        if m is None:
            break
        pos = m.end()
    return pos


def _connector(text: str, pos: int, limit: int) -> tuple[int, str] | None:
    """Where the value starts after "is", ":", "lautet", "c'est"..., and which kind of connector it was."""
    pos = _skip_spaces(text, pos, limit)
    if pos < limit and text[pos] == ",":  # "mon mot de passe, c'est x"
        m = _VERB.match(text, _skip_spaces(text, pos + 1, limit), limit)
        # After a comma the verb may be about the whole sentence ("mon mdp, c'est normal ?"): only a value
        # that looks like a secret (a digit or a symbol) is taken.
        return None if m is None else (_skip_fillers(text, m.end(), limit), "comma")
    if pos < limit and text[pos] in "\"'" and not text[pos + 1 : pos + 2].isalpha():  # "password": "x"
        pos += 1
    pos = _skip_fillers(text, _skip_spaces(text, pos, limit), limit)
    m = _SYMBOL.match(text, pos, limit)
    if m is not None:
        return _skip_fillers(text, m.end(), limit), "sym"
    m = _VERB.match(text, pos, limit)
    if m is not None:
        pos = _skip_fillers(text, m.end(), limit)
        m = _SYMBOL.match(text, pos, limit)
        return (m.end(), "sym") if m is not None else (pos, "verb")
    m = _TO.match(text, pos, limit)
    if m is not None:
        return _skip_fillers(text, m.end(), limit), "to"
    return None


def _linked_connectors(text: str, pos: int, limit: int) -> list[tuple[int, str]]:
    """Connectors a few words on: "password for alice@example.com: x", "il codice che mi è arrivato è x"."""
    found: list[tuple[int, str]] = []
    m = _LINK.match(text, _skip_spaces(text, pos, limit), limit)
    if m is None:
        return found
    pos = m.end()
    for _ in range(_LINK_WORDS):
        word = _LINK_WORD.match(text, pos, limit)
        if word is None or word.group().rstrip().endswith("."):
            break
        pos = word.end()
        connector = _connector(text, pos, limit)
        if connector is not None and connector[1] != "to":
            found.append(connector)
    return found


def _digit_value(text: str, start: int, end: int, limit: int) -> tuple[int, int] | None:
    """The end and digit count of a code such as 4829, 482-913 or 48 29 13 starting at start, or None."""
    value = text[start:end]
    if _DIGITS.fullmatch(value) is None or value[-1] == "-" or "--" in value:
        return None
    if value.startswith("1000") and _WEBEX_ERROR.match(text, start + 4, limit):
        return None
    count = sum(c.isdigit() for c in value)
    groups = _NEXT_DIGIT if count == 1 else _NEXT_DIGITS  # "1 2 3 4" one by one, but not "1000 2"
    while count < _MAX_DIGITS:
        m = groups.match(text, end, limit)
        if m is None:
            break
        end, count = m.end(), count + len(m.group()) - 1
    return end, count


def _take_value(
    text: str, pos: int, family: str, kind: str, vouched: bool, limit: int
) -> tuple[int, int] | None:
    """The span of the value at pos, if it is a secret for this family after this kind of connector.

    vouched: a bare "code" that its context makes secret ("my code 4829").
    """
    if pos >= len(text):
        return None
    close = _QUOTES.get(text[pos])
    start, end = pos, -1
    if close is not None:
        end = text.find(close, pos + 1, min(len(text), pos + 1 + _MAX_QUOTED))
        if end > pos + 1 and "\n" not in text[pos + 1 : end]:
            start = pos + 1
            while start < end and text[start].isspace():
                start += 1
            while end > start and text[end - 1].isspace():
                end -= 1
        else:
            end = -1
    if end < 0:
        run = _RUN.match(text, pos, min(len(text), pos + _MAX_VALUE))
        if run is None:
            return None
        start, end = run.span()
        while start < end and text[start] in _LEADING:
            start += 1
        while end > start and text[end - 1] in _TRAILING:
            end -= 1
    value = text[start:end]
    if (
        not value
        or value.startswith(MASK)
        or _HARMLESS.fullmatch(value)
        or not any(c.isalnum() for c in value)
    ):
        return None
    if family == "token":
        return (start, end) if len(value) >= 8 and _looks_random(value) else None
    if family in ("pin", "otp", "code"):
        digits = _digit_value(text, start, end, limit)
        if digits is not None:
            end, count = digits
            if _followed_by_unit(text, end, limit):
                return None
            if family == "pin":
                needed = 3 if kind == "none" and not vouched else 2
            elif family == "otp":
                needed = 3
            else:
                needed = 4 if kind in ("verb", "sym") or vouched else 6
            return (start, end) if count >= needed else None
        # recovery and backup codes are letters and digits: 7hG2-k9Lp
        if family == "otp" and len(value) >= 6 and _looks_random(value):
            return start, end
        return None
    if kind in ("none", "to", "comma") or (family == "weak" and kind == "verb"):
        if (
            not _secretish(value)
            or (kind == "none" and len(value) < 4)
            or _followed_by_unit(text, end, limit)
        ):
            return None
        return start, end
    if " " in value:  # a quoted phrase: 'correct horse'
        return start, end
    if _is_word(value):
        # "my password is Windows password" names which one, not what it is
        if _describes(value) or _KEYWORD.match(text, _skip_spaces(text, end, limit), limit):
            return None
        return start, end
    if _secretish(value) and value[0].isdigit() and _followed_by_unit(text, end, limit):
        return None
    if value[0].isdigit() and "-" in value and _is_word(value.lstrip("0123456789-")):  # 4-stellig, 6-digit
        return None
    return start, end


def _code_is_labelled(text: str, keyword: re.Match[str]) -> bool:
    """ "error code 1005", "HTTP status code 401", "code d'erreur 1005", "código de error 1005"."""
    words = [
        w.strip(".,;:!?()\"'").casefold()
        for w in text[max(0, keyword.start() - 30) : keyword.start()].split()
    ]
    return (
        any(w in _CODE_LABELS for w in words[-2:]) or _CODE_LABEL_AFTER.match(text, keyword.end()) is not None
    )


def _is_possessed(text: str, start: int) -> bool:
    words = text[max(0, start - 12) : start].split()
    return bool(words) and words[-1].casefold() in _POSSESSIVES


def _value_after(text: str, keyword: re.Match[str], family: str) -> tuple[int, int] | None:
    start = keyword.end()
    limit = min(len(text), start + _WINDOW)
    vouched = family == "code" and _is_possessed(text, keyword.start())
    adjective = _POST_ADJECTIVE.match(text, start, limit)  # "a senha nova é", "password nuova:"
    if adjective is not None:
        start = adjective.end()
    direct = _connector(text, start, limit)
    if direct is not None:
        found = _take_value(text, direct[0], family, direct[1], vouched, limit)
        if found is not None or direct[1] != "to":
            return found
    linked = _linked_connectors(text, start, limit)
    for pos, kind in linked:
        found = _take_value(text, pos, family, kind, vouched, limit)
        if found is not None:
            return found
    if linked:
        return None
    if start < limit and text[start] in " \t":  # "passwd Xq7#pLm2", "PIN 4821", "my code 4829"
        return _take_value(text, _skip_spaces(text, start, limit), family, "none", vouched, limit)
    return None


def _value_before(text: str, keyword: re.Match[str], family: str) -> tuple[int, int] | None:
    """ "Hunter2 is my password", "1234 is my PIN", "Hunter2 è la mia password"."""
    if family not in ("pw", "pin", "otp", "code"):
        return None
    lo = max(0, keyword.start() - 80)
    words = text[lo : keyword.start()].split()[-6:]
    skipped = 0
    while len(words) > skipped and skipped < 3 and words[-1 - skipped].casefold() in _BEFORE_WORDS:
        skipped += 1
    if len(words) < skipped + 2 or words[-1 - skipped].casefold() not in _BEFORE_VERBS:
        return None
    # "1005 is the code" names an error code; "4829 is my code" does not
    if family == "code" and not any(
        word.casefold() in _POSSESSIVES for word in words[len(words) - skipped :]
    ):
        return None
    value = words[-2 - skipped]
    if value.startswith(MASK) or _HARMLESS.fullmatch(value) or not _secretish(value):
        return None
    if family != "pw" and (_DIGITS.fullmatch(value) is None or sum(c.isdigit() for c in value) < 3):
        return None
    # Only spaces follow each of these words, so the rightmost copy of one before the next is the word itself.
    end = keyword.start()
    for word in reversed(words[-2 - skipped :]):
        end = text.rfind(word, lo, end)
    return end, end + len(value)


def _spans(text: str) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    for pattern, needs_digit in _SHAPES:
        for m in pattern.finditer(text):
            start, end = m.span("secret") if "secret" in pattern.groupindex else m.span()
            if end > start and (not needs_digit or _looks_random(text[start:end])):
                spans.append((start, end))
    for keyword in _KEYWORD.finditer(text):
        family = keyword.lastgroup or ""
        if family == "code" and _code_is_labelled(text, keyword):
            continue
        for found in (_value_after(text, keyword, family), _value_before(text, keyword, family)):
            if found is not None:
                spans.append(found)
    return spans


def _mask(text: str, spans: list[tuple[int, int]]) -> str:
    parts: list[str] = []
    done = 0
    for start, end in sorted(spans):
        if end <= done:
            continue
        if start >= done:
            parts += (text[done:start], MASK)
        done = end  # a span that overlaps the last one widens it
    parts.append(text[done:])
    return "".join(parts)


def redact(text: str) -> str:
    """Mask secret values; keep what was said about them, and error codes such as 1000:1002.

    Masking a value can remove the word that made its neighbour harmless (an "error" before "code 482913"), so
    passes repeat until nothing changes (two, in practice): that makes redact(redact(x)) == redact(x).
    """
    for _ in range(_MAX_PASSES):
        spans = _spans(text)
        masked = _mask(text, spans) if spans else text
        if masked == text:
            break
        text = masked
    return text
