# ruff: noqa: E501 - the payloads are kept as the cheat sheet writes them
"""Payloads of the OWASP XSS filter evasion cheat sheet, as Markdown messages
would carry them: raw tags, links and autolinks in every spelling of
`javascript:`, event handlers, entity tricks, `<img onerror>`, data: and
vbscript: URIs, SVG and style. None may survive into a message's `html`."""

from __future__ import annotations

import re
from html.parser import HTMLParser

SCHEMES = [
    "javascript:alert(1)",
    "JaVaScRiPt:alert(1)",
    "JAVASCRIPT:alert(1)",
    " javascript:alert(1)",
    "java\tscript:alert(1)",
    "java\nscript:alert(1)",
    "java&#x09;script:alert(1)",
    "java&#x0A;script:alert(1)",
    "java&#x0D;script:alert(1)",
    "&#106;&#97;&#118;&#97;&#115;&#99;&#114;&#105;&#112;&#116;&#58;alert(1)",
    "&#0000106&#0000097&#0000118&#0000097&#0000115&#0000099&#0000114&#0000105&#0000112&#0000116&#0000058alert(1)",
    "&#x6A&#x61&#x76&#x61&#x73&#x63&#x72&#x69&#x70&#x74&#x3A;alert(1)",
    "&#x6A;avascript:alert(1)",
    "javascript&colon;alert(1)",
    "jav&#x61;script:alert(1)",
    "\x01javascript:alert(1)",
    "javascript://%0Aalert(1)",
    "vbscript:msgbox(1)",
    "VBScript:msgbox(1)",
    "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
    "data:text/html,<script>alert(1)</script>",
    "DATA:text/html,<script>alert(1)</script>",
    "livescript:alert(1)",
    "file:///etc/passwd",
]

RAW = [
    "<script>alert('XSS')</script>",
    "<SCRIPT SRC=https://xss.rocks/xss.js></SCRIPT>",
    "<SCRIPT/XSS SRC=\"http://xss.rocks/xss.js\"></SCRIPT>",
    "<<SCRIPT>alert(\"XSS\");//\\<</SCRIPT>",
    "<SCRIPT SRC=//xss.rocks/.j>",
    "<IMG SRC=\"javascript:alert('XSS');\">",
    "<IMG SRC=javascript:alert('XSS')>",
    "<IMG SRC=`javascript:alert(\"RSnake says, 'XSS'\")`>",
    "<IMG \"\"\"><SCRIPT>alert(\"XSS\")</SCRIPT>\"\\>",
    "<IMG SRC=# onmouseover=\"alert('xxs')\">",
    "<IMG SRC= onmouseover=\"alert('xxs')\">",
    "<IMG onmouseover=\"alert('xxs')\">",
    "<IMG SRC=/ onerror=\"alert(String.fromCharCode(88,83,83))\"></img>",
    "<img src=x onerror=\"&#0000106&#0000097&#0000118&#0000097&#0000115&#0000099&#0000114&#0000105&#0000112&#0000116&#0000058&#0000097&#0000108&#0000101&#0000114&#0000116&#0000040&#0000039&#0000088&#0000083&#0000083&#0000039&#0000041\">",
    "<img src=x onerror=alert(1)//",
    "<BODY ONLOAD=alert('XSS')>",
    "<svg/onload=alert('XSS')>",
    "<svg><script>alert(1)</script></svg>",
    "<svg><a xlink:href=\"javascript:alert(1)\"><text x=20 y=20>XSS</text></a></svg>",
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
    "<STYLE>li {list-style-image: url(\"javascript:alert('XSS')\");}</STYLE><UL><LI>XSS</br>",
    "<DIV STYLE=\"background-image: url(javascript:alert('XSS'))\">",
    "<DIV STYLE=\"width: expression(alert('XSS'));\">",
    "<IFRAME SRC=\"javascript:alert('XSS');\"></IFRAME>",
    "<FRAMESET><FRAME SRC=\"javascript:alert('XSS');\"></FRAMESET>",
    "<TABLE BACKGROUND=\"javascript:alert('XSS')\">",
    "<OBJECT TYPE=\"text/x-scriptlet\" DATA=\"http://xss.rocks/scriptlet.html\"></OBJECT>",
    "<EMBED SRC=\"data:image/svg+xml;base64,PHN2ZyB4bWxuczpzdmc9Imh0dH A6Ly93d3cudzMub3JnLzIwMDAvc3ZnIiB4bWxucz0iaHR0cDovL3d3dy53My5vcmcv MjAwMC9zdmciIHhtbG5zOnhsaW5rPSJodHRwOi8vd3d3LnczLm9yZy8xOTk5L3hs aW5rIiB2ZXJzaW9uPSIxLjAiIHg9IjAiIHk9IjAiIHdpZHRoPSIxOTQiIGhlaWdodD0iMjAw IiBpZD0ieHNzIj48c2NyaXB0IHR5cGU9InRleHQvZWNtYXNjcmlwdCI+YWxlcnQoIlh TUyIpOzwvc2NyaXB0Pjwvc3ZnPg==\" type=\"image/svg+xml\" AllowScriptAccess=\"always\"></EMBED>",
    "<META HTTP-EQUIV=\"refresh\" CONTENT=\"0;url=javascript:alert('XSS');\">",
    "<LINK REL=\"stylesheet\" HREF=\"javascript:alert('XSS');\">",
    "<BASE HREF=\"javascript:alert('XSS');//\">",
    "<a href=\"javascript:alert(1)\">x</a>",
    "<a href=\"jav&#x09;ascript:alert(1)\">x</a>",
    "<INPUT TYPE=\"IMAGE\" SRC=\"javascript:alert('XSS');\">",
    "<form><button formaction=javascript:alert(1)>x</button></form>",
    "<details open ontoggle=alert(1)>",
    "<!--<img src=x onerror=alert(1)>-->",
    "<![CDATA[<script>alert(1)</script>]]>",
    "&lt;script&gt;alert(1)&lt;/script&gt;",
    "&#60;script&#62;alert(1)&#60;/script&#62;",
    "\\<script\\>alert(1)\\</script\\>",
    "`<script>`<script>alert(1)</script>",
    "<scr<script>ipt>alert(1)</script>",
    "<x onclick=alert(1)>click",
    "<span class=\"mention\" data-user=\"x\" onclick=\"alert(1)\">@x</span>",
]


def markdown_payloads() -> list[str]:
    """Each scheme as every kind of Markdown link, plus the raw-HTML payloads."""
    found = list(RAW)
    for scheme in SCHEMES:
        found += [
            f"[click]({scheme})",
            f"[click](<{scheme}>)",
            f"<{scheme}>",
            f"[click][ref]\n\n[ref]: {scheme}",
            f"![img]({scheme})",
            f"[![img](x)]({scheme})",
            f"[click]({scheme} \"title\")",
            scheme,
        ]
    return found


TAGS = {"p", "br", "hr", "strong", "em", "del", "s", "code", "pre", "a", "ul", "ol", "li",
        "blockquote", "span", "h1", "h2", "h3", "h4", "h5", "h6"}
ATTRIBUTES = {"href", "title", "target", "rel", "class", "data-user", "start"}


class Tags(HTMLParser):
    """Every tag and attribute a browser would see in the html."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in TAGS:
            self.problems.append(f"<{tag}>")
        for name, value in attrs:
            if name not in ATTRIBUTES:
                self.problems.append(f"{name} on <{tag}>")
            elif name == "href" and not re.match(r"(https?:|mailto:)", value or ""):
                self.problems.append(f"href={value!r}")

    def handle_comment(self, data):
        self.problems.append("a comment")

    def unknown_decl(self, data):
        self.problems.append(f"<![{data}]>")


def unsafe(html: str) -> list[str]:
    """What in `html` could run script or load anything: empty when it is safe."""
    parser = Tags()
    parser.feed(html)
    parser.close()
    return parser.problems
